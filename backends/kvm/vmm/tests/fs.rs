//! hyper-vmm's virtio-fs (vhost-user frontend) on this machine's /dev/kvm
//! with a real virtiofsd (namespace sandbox, as the backend kit starts it):
//! the freestanding test guest sends FUSE requests through the real
//! request queue and virtiofsd answers in the guest's (memfd) memory; the
//! file it wrote is on the host. And virtiofsd dying stops the VM with
//! `helper_died`.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    shared: PathBuf,
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // Its process group: the sandbox's child too.
        // SAFETY: signalling the group of a child this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn virtiofsd(dir: &Path, read_only: bool) -> Option<Virtiofsd> {
    kvm_or_skip("virtio-fs")?;
    let binary = virtiofsd_or_skip()?;
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"HYPERTG-FS-HOST and more\n").unwrap();
    std::fs::write(shared.join("big"), vec![0x42u8; 1 << 20]).unwrap();
    let socket = dir.join("vfsd.sock");
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "namespace", "--cache", "never"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if read_only {
        cmd.arg("--readonly");
    }
    let child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < end, "virtiofsd never made its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Virtiofsd {
        child,
        socket,
        shared,
    })
}

fn args(dir: &Path, v: &Virtiofsd, cmdline: &str) -> Vec<String> {
    let mut a = base_args(&guest().elf, dir, cmdline);
    a.extend([
        "--share".into(),
        format!("tag=vol-a,socket={}", v.socket.display()),
    ]);
    a
}

fn run_guest(dir: &Path, v: &Virtiofsd, cmdline: &str) -> String {
    let mut child = spawn(&args(dir, v, cmdline));
    let st = wait_timeout(&mut child, Duration::from_secs(120));
    let log = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let (_, err) = output(child);
    assert!(st.success(), "exit {st:?}\nconsole:\n{log}\nstderr:\n{err}");
    log
}

fn assert_checks(log: &str, checks: &[&str]) {
    for check in checks {
        assert!(
            log.contains(&format!("tg: ok {check}\n")),
            "check {check} missing:\n{log}"
        );
    }
    assert!(log.contains("tg: done failed=0"), "{log}");
}

#[test]
fn the_guest_reads_and_writes_a_share_through_virtiofsd() {
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = virtiofsd(dir.path(), false) else {
        return;
    };
    let log = run_guest(dir.path(), &v, "tg.hello tg.fs_tag=vol-a tg.fs_bench=32");
    assert_checks(
        &log,
        &[
            "fs-bench-open",
            "fs-bench",
            "fs-tag",
            "fs-features",
            "fs-driver-ok",
            "fs-init",
            "fs-lookup",
            "fs-open",
            "fs-read",
            "fs-write",
        ],
    );
    let host = std::fs::read(v.shared.join("hello")).unwrap();
    assert!(
        host.starts_with(b"HYPERTG-FS-GUEST"),
        "{:?}",
        String::from_utf8_lossy(&host)
    );
}

#[test]
fn a_read_only_share_refuses_the_guests_writes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = virtiofsd(dir.path(), true) else {
        return;
    };
    let log = run_guest(dir.path(), &v, "tg.hello tg.fs_tag=vol-a tg.fs_ro");
    assert_checks(&log, &["fs-tag", "fs-init", "fs-lookup", "fs-ro-refused"]);
    let host = std::fs::read(v.shared.join("hello")).unwrap();
    assert!(host.starts_with(b"HYPERTG-FS-HOST"));
}

#[test]
fn virtiofsd_dying_stops_the_vm_with_helper_died() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut v) = virtiofsd(dir.path(), false) else {
        return;
    };
    let sock = dir.path().join("agent.sock");
    // The guest waits on the console for a line that never comes.
    let mut a = args(dir.path(), &v, "tg.echo");
    a.extend(["--agent-socket".into(), s(&sock)]);
    let mut child = spawn(&a);
    let end = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "agent socket: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.ends_with(b"tg:console-ready\n") {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "console closed");
        got.extend_from_slice(&b[..n]);
    }
    // SAFETY: signalling the group of a child this test started.
    unsafe { libc::kill(-(v.child.id() as i32), libc::SIGKILL) };
    let _ = v.child.wait();
    let st = wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(st.code(), Some(4), "{st:?}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "helper_died", "{status}");
    assert_eq!(status["helper"], "virtiofsd", "{status}");
    assert_eq!(status["tag"], "vol-a", "{status}");
}

#[test]
fn a_missing_virtiofsd_is_a_clear_error() {
    if kvm_or_skip("virtio-fs").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(&[
        "--kernel".into(),
        s(&guest().elf),
        "--memory-mib".into(),
        "64".into(),
        "--status-file".into(),
        s(dir.path().join("status.json")),
        "--share".into(),
        format!(
            "tag=vol-a,socket={}",
            dir.path().join("none.sock").display()
        ),
    ]);
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "{st:?}");
    let status = status(&dir.path().join("status.json"));
    let msg = status["message"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("vol-a") && msg.contains("none.sock") && msg.contains("virtiofsd"),
        "{msg}"
    );
}

#[test]
fn a_hostile_guest_on_a_share_takes_down_neither_the_vmm_nor_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = virtiofsd(dir.path(), false) else {
        return;
    };
    let mut child = spawn(&args(dir.path(), &v, "tg.hostile"));
    let st = wait_timeout(&mut child, Duration::from_secs(180));
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    let (_, err) = output(child);
    let status = status(&dir.path().join("status.json"));
    // Garbage rings handed to virtiofsd may make it give up: then the VM
    // stops with helper_died, as it must. Anything else is a bug.
    match status["reason"].as_str() {
        Some("debug_exit") => {
            assert!(st.success(), "{st:?}");
            assert!(log.contains("tg: hostile done"), "{log}");
        }
        Some("helper_died") => assert_eq!(st.code(), Some(4), "{st:?}"),
        _ => panic!("{status}\nstderr:\n{err}"),
    }
    assert!(!err.contains("panicked"), "{err}");
    // Nothing outside the share changed; the share still holds its file.
    assert!(v.shared.join("hello").exists());
}
