//! Terminals (`-t`): the size the client's terminal has, resizes (SIGWINCH),
//! raw mode and the detach keys. `hyper` runs on a real pty made here, as it
//! would in a terminal emulator.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_tests::{bin, busybox_rootfs, text, wait_with_timeout, Hyperd};

const WAIT: Duration = Duration::from_secs(120);

/// `hyper ARGS…` with a pty as its stdin, stdout, stderr and controlling
/// terminal; everything it writes is collected.
struct PtyHyper {
    master: std::fs::File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

impl PtyHyper {
    fn spawn(d: &Hyperd, args: &[&str], rows: u16, cols: u16) -> Self {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds to the valid pointers given.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty just returned these fds, owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        set_size(&slave, rows, cols);
        let mut cmd = Command::new(bin("hyper"));
        cmd.args(args)
            .env("HYPER_HOST", &d.socket)
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn hyper");
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup");
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once hyper and everything on the slave are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            child,
            output,
        }
    }

    /// What hyper wrote. Without -i the client's terminal stays in its
    /// normal mode (as with Docker), which turns the container terminal's
    /// \r\n into \r\r\n: folded back here.
    fn output(&self) -> String {
        text(&self.output.lock().unwrap()).replace("\r\r\n", "\r\n")
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the output: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }

    fn resize(&self, rows: u16, cols: u16) {
        // The kernel sends SIGWINCH to hyper, the pty's foreground.
        set_size(&self.master, rows, cols);
    }

    fn wait(&mut self) -> i32 {
        let status = wait_with_timeout(&mut self.child, WAIT)
            .unwrap_or_else(|| panic!("hyper did not exit; output: {:?}", self.output()));
        // Let the reader take the last bytes.
        std::thread::sleep(Duration::from_millis(200));
        status.code().unwrap_or(-1)
    }
}

impl Drop for PtyHyper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rootfs() -> String {
    busybox_rootfs().to_string_lossy().into_owned()
}

fn run_detached(d: &Hyperd, name: &str) -> String {
    let rootfs = rootfs();
    let out = d.hyper(&[
        "run",
        "-d",
        "--name",
        name,
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "run -d: {}\n{}",
        text(&out.stderr),
        d.log_text()
    );
    text(&out.stdout).trim().to_string()
}

fn is_running(d: &Hyperd, pod: &str) -> bool {
    let out = d.hyper(&["ps", "--json"]);
    let pods: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ps --json");
    pods.iter().any(|p| p["name"] == pod || p["id"] == pod)
}

#[test]
fn exec_t_has_the_client_size_follows_resizes_and_detaches() {
    let d = Hyperd::start();
    run_detached(&d, "term");

    // The size the client's terminal has, from the process's first moment.
    let mut p = PtyHyper::spawn(&d, &["exec", "-t", "term", "stty", "size"], 33, 101);
    assert_eq!(p.wait(), 0, "output: {:?}", p.output());
    assert!(p.output().contains("33 101\r\n"), "{:?}", p.output());

    // Without a terminal: -t alone gets 24x80, -i -t is refused as Docker does.
    let out = d.hyper(&["exec", "-t", "term", "sh", "-c", "stty size; tty"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "24 80\r\n/dev/pts/0\r\n");
    let out = d.hyper(&["exec", "-i", "-t", "term", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("the input device is not a TTY"));

    // Interactive: keys go in raw (no local echo, ^C is a byte for the
    // container), a resize arrives as SIGWINCH, Ctrl-P Ctrl-Q detaches and
    // leaves the process running.
    let mut p = PtyHyper::spawn(
        &d,
        &[
            "exec",
            "-i",
            "-t",
            "term",
            "sh",
            "-c",
            "trap 'stty size' WINCH; echo ready; while :; do read -r l && echo got:$l; done",
        ],
        30,
        90,
    );
    p.wait_for("ready");
    p.send(b"hello\r");
    p.wait_for("got:hello");
    p.resize(40, 120);
    p.send(b"\r");
    p.wait_for("40 120");
    p.send(b"\x10\x11");
    assert_eq!(p.wait(), 0, "detach exits 0; output: {:?}", p.output());
    let out = d.hyper(&["exec", "term", "ps"]);
    assert!(
        text(&out.stdout).contains("echo ready"),
        "the detached process is gone: {}",
        text(&out.stdout)
    );
    let out = d.hyper(&["rm", "-f", "term"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn run_t_gets_a_terminal_and_detaching_leaves_the_pod_running() {
    let d = Hyperd::start();
    let rootfs = rootfs();
    let mut p = PtyHyper::spawn(
        &d,
        &[
            "run",
            "--rm",
            "-t",
            "--rootfs",
            &rootfs,
            "--",
            "sh",
            "-c",
            "stty size; tty; echo err >&2",
        ],
        20,
        70,
    );
    assert_eq!(p.wait(), 0, "output: {:?}", p.output());
    let out = p.output();
    assert!(out.contains("20 70\r\n/dev/pts/0\r\nerr\r\n"), "{out:?}");

    let mut p = PtyHyper::spawn(
        &d,
        &[
            "run",
            "-i",
            "-t",
            "--name",
            "shell",
            "--detach-keys",
            "ctrl-x,x",
            "--rootfs",
            &rootfs,
            "--",
            "sh",
        ],
        25,
        100,
    );
    p.send(b"echo $((6*7))\r");
    p.wait_for("42");
    p.send(b"\x18x");
    assert_eq!(p.wait(), 0, "detach exits 0; output: {:?}", p.output());
    assert!(is_running(&d, "shell"), "the pod stopped on detach");
    let out = d.hyper(&["exec", "shell", "echo", "still here"]);
    assert_eq!(text(&out.stdout), "still here\n");

    // Attach again: the shell's terminal takes this client's size, keys
    // reach it, and its exit status is attach's.
    let mut p = PtyHyper::spawn(&d, &["attach", "shell"], 31, 77);
    p.send(b"stty size\r");
    p.wait_for("31 77");
    p.send(b"exit 3\r");
    assert_eq!(p.wait(), 3, "output: {:?}", p.output());
    assert!(!is_running(&d, "shell"));
    let out = d.hyper(&["rm", "shell"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A bad --detach-keys is a clear error.
    let out = d.hyper(&["exec", "-i", "-t", "--detach-keys", "ctrl-1", "x", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("--detach-keys"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn attach_follows_a_pod_restarted_by_its_policy_with_its_size_and_keys() {
    let d = Hyperd::start();
    let rootfs = rootfs();
    let out = d.hyper(&[
        "run",
        "-d",
        "-i",
        "-t",
        "--name",
        "again",
        "--restart",
        "on-failure:1",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "echo start; stty size; trap 'echo winch; stty size' WINCH; \
         while :; do read -r x && [ \"$x\" = q ] && exit 1; done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    d.wait_for_log(&id, "start");

    // Attaching sizes the terminal to this client (SIGWINCH in the guest).
    let mut p = PtyHyper::spawn(&d, &["attach", "again"], 31, 77);
    p.wait_for("winch\r\n31 77");
    // q ends the process with 1: the policy boots a fresh VM, whose process
    // starts at the last size, and this client stays attached to it.
    p.send(b"q\r");
    p.wait_for("start\r\n31 77");
    p.send(b"q\r");
    assert_eq!(p.wait(), 1, "output: {:?}", p.output());
    let out = d.hyper(&["inspect", "again"]);
    let pods: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("inspect");
    assert_eq!(pods[0]["restart_count"], 1);
    let out = d.hyper(&["rm", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
