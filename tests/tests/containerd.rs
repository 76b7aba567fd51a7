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
        Self::launch(false)
    }

    /// With the CRI plugin on: CNI from Debian's plugins (`/usr/lib/cni`)
    /// and the test's conflist, the project's registry as a plain-HTTP
    /// mirror, and one runtime handler per backend (`hyper-qemu`,
    /// `hyper-kvm`, `hyper-xen`), each naming a hypercontainer config for
    /// that backend through `ConfigPath`.
    fn start_cri() -> Self {
        Self::launch(true)
    }

    fn launch(cri: bool) -> Self {
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
        // Without CRI: the `ctr` path (no CNI, no sandboxes).
        let (top, plugins) = if cri {
            (String::new(), cri_config(&dir, &hyper.config))
        } else {
            (
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(),
                String::new(),
            )
        };
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{top}\n\
                 [grpc]\naddress = \"{sock}\"\n\n[ttrpc]\naddress = \"{sock}.ttrpc\"\n\n\
                 [debug]\nlevel = \"debug\"\n\n{plugins}",
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
        self.shim_socket_in("default", id)
    }

    fn shim_socket_in(&self, namespace: &str, id: &str) -> PathBuf {
        let key = format!("{}/{namespace}/{id}", self.socket.display());
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

/// `ctr events` of the test's containerd, subscribed until dropped: its
/// lines (`<time, 4 words> <namespace> <topic> <json>`) go to a file.
struct Events {
    child: Child,
    out: PathBuf,
}

impl Events {
    fn subscribe(c: &Containerd, name: &str) -> Events {
        let out = c.dir.join(format!("events-{name}"));
        let child = Command::new(CTR)
            .arg("--address")
            .arg(&c.socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("events file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        Events { child, out }
    }

    /// The topics published about container `id`, in order, once its
    /// `/tasks/delete` is among them (containerd delivers events after
    /// the call that caused them returns).
    fn topics_until_deleted(&self, c: &Containerd, id: &str) -> Vec<String> {
        let needle = format!("\"container_id\":\"{id}\"");
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let topics: Vec<String> = std::fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&needle))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find(|w| w.starts_with("/tasks/"))
                        .map(str::to_string)
                })
                .collect();
            if topics.iter().any(|t| t == "/tasks/delete") {
                return topics;
            }
            assert!(
                Instant::now() < deadline,
                "no /tasks/delete of {id} among {topics:?}\ncontainerd log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A task whose process the guest's OOM killer ends: `/tasks/oom` before
/// `/tasks/exit`, exit 137 (what runc's and Kata's shims publish, and what
/// containerd's CRI turns into `OOMKilled`); a task that ends with SIGKILL
/// otherwise: 137 and no `/tasks/oom`.
#[test]
fn ctr_run_of_a_task_the_guest_oom_kills_publishes_task_oom_before_its_exit() {
    let c = Containerd::start();
    let image = busybox(&c);
    let events = Events::subscribe(&c, "oom");

    // tail buffers its last line, and /dev/zero has none: it grows until
    // the guest (the config's 128 MiB) runs out of memory and its OOM
    // killer picks it. It is the container's init (exec), as in oom.rs.
    let out = c.run(
        &["--rm"],
        &image,
        "oomer",
        &["sh", "-c", "echo growing; exec tail /dev/zero"],
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "stdout: {}\nstderr: {}\ncontainerd log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.log_text()
    );
    assert!(
        text(&out.stdout).contains("growing"),
        "{}",
        text(&out.stdout)
    );
    let topics = events.topics_until_deleted(&c, "oomer");
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(
        matches!((oom, exit), (Some(o), Some(e)) if o < e),
        "events of oomer: {topics:?}"
    );
    assert_eq!(
        topics.iter().filter(|t| *t == "/tasks/oom").count(),
        1,
        "{topics:?}"
    );

    // 137 from a SIGKILL that is not the OOM killer's: no /tasks/oom.
    let out = c.run(
        &["--rm"],
        &image,
        "killed",
        &["sh", "-c", "sh -c 'kill -9 $$'; exit $?"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let topics = events.topics_until_deleted(&c, "killed");
    assert!(topics.iter().any(|t| t == "/tasks/exit"), "{topics:?}");
    assert!(!topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");
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

/// The CNI network of the CRI test (a bridge of its own, host-local IPAM).
const CRI_SUBNET_PREFIX: &str = "10.231.77.";
const CRI_BRIDGE: &str = "hycri0";

/// The CRI plugin's part of containerd's config: CNI, the registry mirror,
/// a runtime handler per backend. The handler of the test's backend names
/// the test's config; the others name configs made from it for their
/// backend (so the per-backend RuntimeClass setup is the one exercised).
fn cri_config(dir: &Path, hyper_config: &Path) -> String {
    let cni = dir.join("cni");
    std::fs::create_dir(&cni).expect("cni dir");
    std::fs::write(
        cni.join("10-hycri.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"hycri","plugins":[{{"type":"bridge","bridge":"{CRI_BRIDGE}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{CRI_SUBNET_PREFIX}0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}]}}"#,
            dir.join("ipam").display()
        ),
    )
    .expect("conflist");
    let registry = registry_var("HYPER_TEST_REGISTRY");
    let test_backend = hyper_tests::backend();
    let text = std::fs::read_to_string(hyper_config).expect("hyper config");
    let mut handlers = String::new();
    for backend in ["qemu", "kvm", "xen"] {
        let config = if backend == test_backend {
            hyper_config.to_path_buf()
        } else {
            let other = dir.join(format!("{backend}.toml"));
            let swapped = text.replacen(
                &format!("hypervisor = \"{test_backend}\""),
                &format!("hypervisor = \"{backend}\""),
                1,
            );
            std::fs::write(&other, swapped).expect("backend config");
            other
        };
        handlers.push_str(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hyper-{backend}]\n\
             runtime_type = \"{RUNTIME}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hyper-{backend}.options]\n\
             ConfigPath = \"{}\"\n\n",
            config.display()
        ));
    }
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         sandbox_image = \"{registry}/hyper/pause:latest\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         bin_dir = \"/usr/lib/cni\"\nconf_dir = \"{cni}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n\
         endpoint = [\"http://{registry}\"]\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         default_runtime_name = \"hyper-{test_backend}\"\n\n{handlers}",
        cni = cni.display()
    )
}

/// A CRI client over containerd's socket (the `k8s-cri` crate's v1 API,
/// what a kubelet speaks).
mod cri {
    use std::path::PathBuf;

    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use tonic::transport::{Channel, Endpoint, Uri};

    pub struct Client {
        pub runtime: RuntimeServiceClient<Channel>,
        pub images: ImageServiceClient<Channel>,
        pub rt: tokio::runtime::Runtime,
    }

    impl Client {
        pub fn connect(socket: PathBuf) -> Client {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let channel = rt
                .block_on(
                    Endpoint::from_static("http://containerd.invalid").connect_with_connector(
                        tower::service_fn(move |_: Uri| {
                            let socket = socket.clone();
                            async move {
                                tokio::net::UnixStream::connect(socket)
                                    .await
                                    .map(hyper_util::rt::TokioIo::new)
                            }
                        }),
                    ),
                )
                .expect("connect to containerd's CRI");
            Client {
                runtime: RuntimeServiceClient::new(channel.clone()),
                images: ImageServiceClient::new(channel),
                rt,
            }
        }
    }
}

/// The shim processes serving task `id`.
fn shims_of(id: &str) -> Vec<u32> {
    processes_mentioning(id)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| text(&c).contains("containerd-shim-hyper-v2"))
        })
        .collect()
}

/// Network namespaces CNI made (`/var/run/netns/cni-…`).
fn cni_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cni-"))
        .collect()
}

#[test]
fn cri_pod_runs_in_a_vm_with_the_cni_address_and_leaves_nothing() {
    use k8s_cri::v1::*;

    let c = Containerd::start_cri();
    let netns_before = cni_netns();
    let mut cri = cri::Client::connect(c.socket.clone());
    let handler = format!("hyper-{}", hyper_tests::backend());
    let image = format!(
        "{}/hyper/busybox:latest",
        registry_var("HYPER_TEST_REGISTRY")
    );
    let logs = c.dir.join("podlogs");
    std::fs::create_dir(&logs).expect("log dir");
    let ctx = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
    };

    // PullImage through the CRI (containerd pulls the sandbox image itself).
    let image_spec = ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let pulled = cri
        .rt
        .block_on(cri.images.pull_image(PullImageRequest {
            image: Some(image_spec.clone()),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("PullImage", e)))
        .into_inner();
    assert!(!pulled.image_ref.is_empty());

    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-cri-test".into(),
            namespace: "hyper-test".into(),
            attempt: 0,
        }),
        hostname: "webpod".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let sandbox = cri
        .rt
        .block_on(cri.runtime.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: handler.clone(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("RunPodSandbox", e)))
        .into_inner()
        .pod_sandbox_id;
    let status = cri
        .rt
        .block_on(cri.runtime.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("PodSandboxStatus", e)))
        .into_inner()
        .status
        .expect("sandbox status");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        ip.starts_with(CRI_SUBNET_PREFIX),
        "the pod's IP {ip:?} is not from the test's CNI network"
    );

    let container = cri
        .rt
        .block_on(cri.runtime.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(image_spec.clone()),
                command: vec!["sh".into(), "-c".into()],
                args: vec!["echo started; exec sleep 3600".into()],
                envs: vec![KeyValue {
                    key: "GREETING".into(),
                    value: "from-cri".into(),
                }],
                log_path: "main.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("CreateContainer", e)))
        .into_inner()
        .container_id;
    cri.rt
        .block_on(cri.runtime.start_container(StartContainerRequest {
            container_id: container.clone(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("StartContainer", e)));

    // ExecSync: output and exit code; the guest's eth0 has CRI's address
    // and the spec's env reached the container.
    let exec = |cri: &mut cri::Client, cmd: &[&str]| -> ExecSyncResponse {
        cri.rt
            .block_on(cri.runtime.exec_sync(ExecSyncRequest {
                container_id: container.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 120,
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("ExecSync", e)))
            .into_inner()
    };
    let out = exec(
        &mut cri,
        &[
            "sh",
            "-c",
            "ip -4 -o addr show dev eth0; echo $GREETING; hostname",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.exit_code, 0, "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&format!("{ip}/24")), "{stdout}");
    assert!(stdout.contains("from-cri"), "{stdout}");
    let out = exec(&mut cri, &["sh", "-c", "echo to-err >&2; exit 7"]);
    assert_eq!(out.exit_code, 7);
    assert!(
        text(&out.stderr).contains("to-err"),
        "{}",
        text(&out.stderr)
    );

    let st = cri
        .rt
        .block_on(cri.runtime.container_status(ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("ContainerStatus", e)))
        .into_inner()
        .status
        .expect("container status");
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    // The CRI-format log file containerd writes from the task's stdout.
    let log = std::fs::read_to_string(logs.join("main.log")).unwrap_or_default();
    assert!(log.contains(" stdout F started"), "CRI log: {log:?}");

    // One VM for the pod: the shim of the sandbox serves the container.
    let shims = shims_of(&sandbox);
    assert_eq!(shims.len(), 1, "shim servers of the sandbox: {shims:?}");
    let vmms = vmm_processes(&c);
    assert_eq!(vmms.len(), 1, "one VM: {vmms:?}");

    remove_pod_and_check_nothing_is_left(&c, &mut cri, &sandbox, &netns_before);
}

/// The processes running the test's VMs: those that mention its state dir
/// but the virtio-fs servers of their shares.
fn vmm_processes(c: &Containerd) -> Vec<u32> {
    processes_mentioning(&c.hyper.state_dir.display().to_string())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| !comm.trim().starts_with("virtiofsd"))
        })
        .collect()
}

/// StopPodSandbox and RemovePodSandbox of `sandbox`, then: no VM or plugin
/// host (they mention the test's state dir), no shim, no netns of CNI, no
/// mount, no shim socket is left.
fn remove_pod_and_check_nothing_is_left(
    c: &Containerd,
    cri: &mut cri::Client,
    sandbox: &str,
    netns_before: &[String],
) {
    use k8s_cri::v1::*;
    let ctx = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
    };
    cri.rt
        .block_on(cri.runtime.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.to_string(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("StopPodSandbox", e)));
    cri.rt
        .block_on(cri.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.to_string(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("RemovePodSandbox", e)));

    let state_dir = c.hyper.state_dir.display().to_string();
    // The VM, the shim and the sandbox's netns go asynchronously (the
    // netns with containerd's handling of the sandbox task's exit): each is
    // waited for, within one deadline.
    let new_netns = || -> Vec<String> {
        cni_netns()
            .into_iter()
            .filter(|n| !netns_before.contains(n))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = (
            processes_mentioning(&state_dir),
            shims_of(sandbox),
            new_netns(),
        );
        let clean = left.0.is_empty() && left.1.is_empty() && left.2.is_empty();
        if clean || Instant::now() > deadline {
            assert!(left.0.is_empty(), "VM processes left: {:?}", left.0);
            assert!(left.1.is_empty(), "shims left: {:?}", left.1);
            assert!(left.2.is_empty(), "netns left: {:?}", left.2);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mounts = c.mounts_left();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    // Nor a mount (a container's root bound for its pod's VM) or a file of
    // the shim's tasks in the hypercontainer state dir.
    let hyper_mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&state_dir))
        .map(str::to_string)
        .collect();
    assert!(hyper_mounts.is_empty(), "mounts left: {hyper_mounts:?}");
    let tasks_left: Vec<_> = std::fs::read_dir(c.hyper.state_dir.join("shim"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(tasks_left.is_empty(), "task state left: {tasks_left:?}");
    let socket = c.shim_socket_in("k8s.io", sandbox);
    assert!(!socket.exists(), "shim socket left: {}", socket.display());
    let _ = std::process::Command::new("ip")
        .args(["link", "del", CRI_BRIDGE])
        .status();
}

/// What the CRI tests of one sandbox start from: containerd with its CRI,
/// a client, the busybox image pulled through the CRI, and a sandbox run
/// with this backend's handler, its logs in `logs`.
struct CriPod {
    c: Containerd,
    cri: cri::Client,
    /// The CNI namespaces there were before the sandbox.
    netns_before: Vec<String>,
    image_spec: k8s_cri::v1::ImageSpec,
    sandbox_config: k8s_cri::v1::PodSandboxConfig,
    sandbox: String,
    logs: PathBuf,
}

impl CriPod {
    fn start(name: &str, uid: &str, hostname: &str) -> Self {
        use k8s_cri::v1::*;

        let c = Containerd::start_cri();
        let netns_before = cni_netns();
        let mut cri = cri::Client::connect(c.socket.clone());
        let handler = format!("hyper-{}", hyper_tests::backend());
        let image_spec = ImageSpec {
            image: format!(
                "{}/hyper/busybox:latest",
                registry_var("HYPER_TEST_REGISTRY")
            ),
            ..Default::default()
        };
        let logs = c.dir.join("podlogs");
        std::fs::create_dir(&logs).expect("log dir");
        let ctx = |what: &str, e: tonic::Status| -> String {
            format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
        };
        cri.rt
            .block_on(cri.images.pull_image(PullImageRequest {
                image: Some(image_spec.clone()),
                ..Default::default()
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("PullImage", e)));
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "hyper-test".into(),
                attempt: 0,
            }),
            hostname: hostname.into(),
            log_directory: logs.display().to_string(),
            ..Default::default()
        };
        let sandbox = cri
            .rt
            .block_on(cri.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: handler,
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("RunPodSandbox", e)))
            .into_inner()
            .pod_sandbox_id;
        Self {
            c,
            cri,
            netns_before,
            image_spec,
            sandbox_config,
            sandbox,
            logs,
        }
    }
}

/// A Kubernetes pod of two containers: both join the sandbox's one VM (one
/// VMM process; both read the guest kernel's boot id), each with its own
/// root; removing one leaves the other running; removing the pod leaves
/// nothing.
#[test]
fn cri_pod_of_two_containers_shares_one_vm_and_loses_them_one_by_one() {
    use k8s_cri::v1::*;

    let CriPod {
        c,
        mut cri,
        netns_before,
        image_spec,
        sandbox_config,
        sandbox,
        logs,
    } = CriPod::start("pair", "uid-cri-pair", "pairpod");
    let ctx = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
    };

    let mut containers = Vec::new();
    for name in ["one", "two"] {
        let id = cri
            .rt
            .block_on(cri.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(image_spec.clone()),
                    command: vec!["sh".into(), "-c".into()],
                    args: vec![format!("echo started-{name}; exec sleep 3600")],
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("CreateContainer", e)))
            .into_inner()
            .container_id;
        cri.rt
            .block_on(cri.runtime.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("StartContainer", e)));
        containers.push(id);
    }
    let exec = |cri: &mut cri::Client, id: &str, cmd: &str| -> ExecSyncResponse {
        cri.rt
            .block_on(cri.runtime.exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                timeout: 120,
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("ExecSync", e)))
            .into_inner()
    };

    // One VM: the same guest kernel under both, one VMM process.
    let boot_ids: Vec<String> = containers
        .iter()
        .map(|id| {
            let out = exec(&mut cri, id, "cat /proc/sys/kernel/random/boot_id");
            assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
            text(&out.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(boot_ids[0].len(), 36, "boot id {:?}", boot_ids[0]);
    assert_eq!(
        boot_ids[0], boot_ids[1],
        "the containers run in two kernels"
    );
    let vmms = vmm_processes(&c);
    assert_eq!(vmms.len(), 1, "one VM: {vmms:?}");
    let shims = shims_of(&sandbox);
    assert_eq!(shims.len(), 1, "shim servers of the sandbox: {shims:?}");
    // Each has its own root: a file one writes is not in the other.
    let out = exec(&mut cri, &containers[0], "echo mine > /only-in-one");
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    let out = exec(&mut cri, &containers[1], "test ! -e /only-in-one");
    assert_eq!(out.exit_code, 0, "container two sees container one's root");
    for (i, name) in ["one", "two"].iter().enumerate() {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            log.contains(&format!(" stdout F started-{name}")),
            "CRI log of {}: {log:?}",
            containers[i]
        );
    }
    // The task's Stats: the VM's figures, as CRI reads them.
    let stats = cri
        .rt
        .block_on(cri.runtime.container_stats(ContainerStatsRequest {
            container_id: containers[1].clone(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("ContainerStats", e)))
        .into_inner()
        .stats
        .expect("container stats");
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(memory > 0, "no memory figure: {memory}");

    // Removing one container leaves the other running in the same VM.
    cri.rt
        .block_on(cri.runtime.stop_container(StopContainerRequest {
            container_id: containers[0].clone(),
            timeout: 0,
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("StopContainer", e)));
    cri.rt
        .block_on(cri.runtime.remove_container(RemoveContainerRequest {
            container_id: containers[0].clone(),
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("RemoveContainer", e)));
    let out = exec(
        &mut cri,
        &containers[1],
        "cat /proc/sys/kernel/random/boot_id",
    );
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), boot_ids[1], "a new VM");
    let st = cri
        .rt
        .block_on(cri.runtime.container_status(ContainerStatusRequest {
            container_id: containers[1].clone(),
            verbose: false,
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("ContainerStatus", e)))
        .into_inner()
        .status
        .expect("container status");
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    assert_eq!(vmm_processes(&c).len(), 1, "one VM");

    remove_pod_and_check_nothing_is_left(&c, &mut cri, &sandbox, &netns_before);
}

/// A container of a CRI pod (joined into the sandbox's VM) that the
/// guest's OOM killer ends: containerd's CRI reports it exited 137 with
/// reason `OOMKilled` (which it sets from the shim's `/tasks/oom`); a
/// container of the same pod that ends with SIGKILL otherwise: 137,
/// reason `Error`. The pod goes on.
#[test]
fn cri_container_the_guest_oom_kills_is_reported_oom_killed() {
    use k8s_cri::v1::*;

    let CriPod {
        c,
        mut cri,
        netns_before,
        image_spec,
        sandbox_config,
        sandbox,
        logs,
    } = CriPod::start("oompod", "uid-cri-oom", "oompod");
    let ctx = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
    };

    let run = |cri: &mut cri::Client, name: &str, script: &str| -> ContainerStatus {
        let id = cri
            .rt
            .block_on(cri.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(image_spec.clone()),
                    command: vec!["sh".into(), "-c".into()],
                    args: vec![script.into()],
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("CreateContainer", e)))
            .into_inner()
            .container_id;
        cri.rt
            .block_on(cri.runtime.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("StartContainer", e)));
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let st = cri
                .rt
                .block_on(cri.runtime.container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }))
                .unwrap_or_else(|e| panic!("{}", ctx("ContainerStatus", e)))
                .into_inner()
                .status
                .expect("container status");
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {name} never exited: {st:?}\ncontainerd log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    // The pod's VM has the config's 128 MiB; tail of /dev/zero (its
    // init, exec'd) grows until the guest's OOM killer picks it.
    let st = run(&mut cri, "oomer", "echo growing; exec tail /dev/zero");
    assert_eq!(
        st.exit_code,
        137,
        "{st:?}\ncontainerd log:\n{}",
        c.log_text()
    );
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    let log = std::fs::read_to_string(logs.join("oomer.log")).unwrap_or_default();
    assert!(log.contains(" stdout F growing"), "CRI log: {log:?}");

    // 137 of a SIGKILL that is not the OOM killer's, in the same pod
    // (which the OOM kill left running).
    let st = run(&mut cri, "killed", "sh -c 'kill -9 $$'; exit $?");
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");

    remove_pod_and_check_nothing_is_left(&c, &mut cri, &sandbox, &netns_before);
}

/// A container joined into a CRI pod's VM runs with its spec's
/// confinement, as runc would run it: a securityContext that drops every
/// capability but NET_ADMIN and sets no_new_privs gives the guest process
/// exactly that bounding set and NoNewPrivs; a container without one gets
/// containerd's default set and no NoNewPrivs (the spec's, not the
/// runtime's own default, which sets it). Read from the container's own
/// `/proc/self/status` (its first process's) through the CRI log, and
/// from an exec, which starts from the container's confinement.
#[test]
fn cri_container_runs_with_its_specs_capabilities_and_no_new_privileges() {
    use k8s_cri::v1::*;

    let CriPod {
        c,
        mut cri,
        netns_before,
        image_spec,
        sandbox_config,
        sandbox,
        logs,
    } = CriPod::start("confined", "uid-cri-confined", "confined");
    let ctx = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", c.log_text())
    };

    let narrow = LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        no_new_privs: true,
        ..Default::default()
    };
    let script = "grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status; exec sleep 3600";
    let mut containers = Vec::new();
    for (name, security) in [("narrow", Some(narrow)), ("plain", None)] {
        let id = cri
            .rt
            .block_on(cri.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(image_spec.clone()),
                    command: vec!["sh".into(), "-c".into()],
                    args: vec![script.into()],
                    log_path: format!("{name}.log"),
                    linux: Some(LinuxContainerConfig {
                        security_context: security,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("CreateContainer", e)))
            .into_inner()
            .container_id;
        cri.rt
            .block_on(cri.runtime.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("{}", ctx("StartContainer", e)));
        containers.push(id);
    }
    // The first process's status, from the CRI log (written as it runs).
    let status_of = |name: &str| -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            if log.contains("NoNewPrivs:") {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no status in the log of {name}: {log:?}\ncontainerd log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // CAP_NET_ADMIN is bit 12.
    let narrow = status_of("narrow");
    assert!(narrow.contains("CapBnd:\t0000000000001000"), "{narrow}");
    assert!(narrow.contains("CapEff:\t0000000000001000"), "{narrow}");
    assert!(narrow.contains("NoNewPrivs:\t1"), "{narrow}");
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL
    // SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD
    // AUDIT_WRITE SETFCAP.
    let plain = status_of("plain");
    assert!(plain.contains("CapBnd:\t00000000a80425fb"), "{plain}");
    // no_new_privs is the spec's as containerd's CRI wrote it (its default
    // for a container without a securityContext is its own to choose).
    let spec_path = c
        .dir
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(&containers[1])
        .join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&spec_path).unwrap_or_else(|e| panic!("{}: {e}", spec_path.display())),
    )
    .expect("the bundle's config.json");
    let spec_nnp = spec["process"]["noNewPrivileges"]
        .as_bool()
        .unwrap_or(false);
    let want = format!("NoNewPrivs:\t{}", u8::from(spec_nnp));
    assert!(plain.contains(&want), "spec says {spec_nnp}: {plain}");
    // An exec starts from its container's confinement.
    let out = cri
        .rt
        .block_on(cri.runtime.exec_sync(ExecSyncRequest {
            container_id: containers[0].clone(),
            cmd: vec![
                "grep".into(),
                "-E".into(),
                "^(CapBnd|NoNewPrivs):".into(),
                "/proc/self/status".into(),
            ],
            timeout: 120,
        }))
        .unwrap_or_else(|e| panic!("{}", ctx("ExecSync", e)))
        .into_inner();
    let stdout = text(&out.stdout);
    assert_eq!(out.exit_code, 0, "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("CapBnd:\t0000000000001000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");

    remove_pod_and_check_nothing_is_left(&c, &mut cri, &sandbox, &netns_before);
}

/// Not a check (no timed assertion): `ctr run --rm IMAGE true` with this
/// runtime next to Debian's runc (`io.containerd.runc.v2`, the no-VM
/// floor), each several times in one containerd; prints median and spread
/// (docs/perf/cri.md). Run with `--ignored`.
#[test]
#[ignore]
fn bench_ctr_run_rm_hyper_vs_runc() {
    const RUNS: usize = 7;
    let c = Containerd::start();
    let image = busybox(&c);
    let config = c.hyper.config.display().to_string();
    for (name, runtime) in [("hyper", RUNTIME), ("runc", "io.containerd.runc.v2")] {
        let mut times = Vec::new();
        for i in 0..RUNS {
            let id = format!("bench-{name}-{i}");
            let mut args = vec!["run", "--rm", "--runtime", runtime];
            if runtime == RUNTIME {
                args.extend_from_slice(&["--runtime-config-path", &config]);
            }
            args.extend_from_slice(&[&image, &id, "true"]);
            let t = Instant::now();
            c.ok(&args);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "BENCH ctr run --rm true, {name}: median {:.0} ms, min {:.0} ms, max {:.0} ms ({RUNS} runs)",
            times[RUNS / 2],
            times[0],
            times[RUNS - 1]
        );
    }
}
