//! The real hyper-vmm binary on this machine's /dev/kvm, with the
//! freestanding test guest (backends/kvm/testguest) booted through the same
//! PVH and bzImage paths the hyperkernel uses.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn connect(path: &Path) -> UnixStream {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(c) => return c,
            Err(e) if Instant::now() > end => panic!("agent socket {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn read_until(c: &mut UnixStream, want: &[u8]) -> Vec<u8> {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = c.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "reading agent socket: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        assert!(
            n > 0,
            "agent socket closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Boots `kernel` with a disk, an initramfs and the console echo, and
/// checks everything the guest reports.
fn full_boot(kernel: &Path, entry: &str) {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64);
    let initrd = initrd(dir.path(), 10_000);
    let sock = dir.path().join("agent.sock");
    let mut args = base_args(
        kernel,
        dir.path(),
        "tg.hello tg.mem_mib=64 tg.cpus=2 tg.initrd=10000 tg.echo tg.disk_serial=hyper-rootfs0 tg.sector=37",
    );
    args.extend([
        "--initrd".into(),
        s(&initrd),
        "--disk".into(),
        format!("path={},id=hyper-rootfs0", disk.display()),
        "--agent-socket".into(),
        s(&sock),
        "--vcpus".into(),
        "2".into(),
    ]);
    let mut child = spawn(&args);
    let mut c = connect(&sock);
    read_until(&mut c, b"tg:console-ready\n");
    // Longer than one 512-byte receive buffer and one transmit chunk.
    let line: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    c.write_all(format!("{line}\n").as_bytes()).unwrap();
    let echoed = read_until(&mut c, b"\n");
    let want = format!("echo:{line}\n");
    assert!(
        String::from_utf8_lossy(&echoed).contains(&want),
        "echo mismatch: {:?}",
        String::from_utf8_lossy(&echoed)
    );
    let st = wait_timeout(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    let (_, err) = output(child);
    assert!(st.success(), "exit {st:?}\nconsole:\n{log}\nstderr:\n{err}");
    assert!(log.contains(&format!("tg: start entry={entry}")), "{log}");
    for check in [
        "boot-protocol",
        "cmdline",
        "memory-map",
        "memory-size",
        "mptable",
        "cpuid-count",
        "initrd",
        "console-tx",
        "console-rx",
        "console-echo",
        "disk-read-only",
        "disk-serial",
        "disk-read",
        "disk-write-refused",
        "disk-read-past-end",
    ] {
        assert!(
            log.contains(&format!("tg: ok {check}\n")),
            "check {check} missing:\n{log}"
        );
    }
    assert!(log.contains("tg: done failed=0"), "{log}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "debug_exit", "{status}");
    assert_eq!(status["status"], 0, "{status}");
    assert!(status["first_port_write_us"].as_u64().is_some(), "{status}");
}

#[test]
fn pvh_boot_with_disk_initrd_and_console_echo() {
    if kvm_or_skip("pvh_boot").is_none() {
        return;
    }
    full_boot(&guest().elf, "pvh");
}

#[test]
fn bzimage_boot_with_disk_initrd_and_console_echo() {
    if kvm_or_skip("bzimage_boot").is_none() {
        return;
    }
    full_boot(&guest().bzimage, "linux64");
}

#[test]
fn hostile_guest_does_not_take_the_vmm_down() {
    if kvm_or_skip("hostile").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 8);
    let mut args = base_args(&guest().elf, dir.path(), "tg.hostile");
    args.extend(["--disk".into(), format!("path={},id=d0", disk.display())]);
    args.extend(["--agent-socket".into(), s(dir.path().join("agent.sock"))]);
    // A NIC over a socket pair whose host end is flooded with frames and
    // never read: garbage queues on a device with input waiting.
    let (tap, host) = dgram_pair();
    for _ in 0..8 {
        let f = [0x5au8; 1514];
        // SAFETY: `f` is valid for its length; MSG_DONTWAIT: stop when full.
        unsafe {
            libc::send(
                host.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    args.extend([
        "--net".into(),
        format!("fd={},mac=02:00:00:00:00:01", tap.as_raw_fd()),
    ]);
    let mut child = spawn_with_fd(&args, tap.as_raw_fd());
    drop(tap);
    let st = wait_timeout(&mut child, Duration::from_secs(120));
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    let (_, err) = output(child);
    assert!(
        st.success(),
        "exit {st:?}\nconsole:\n{log}\nstderr (tail):\n{}",
        tail(&err)
    );
    assert!(log.contains("tg: hostile ports done"), "{log}");
    assert!(log.contains("tg: hostile done"), "{log}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "debug_exit", "{status}");
    assert!(status["guest_faults"].as_u64().unwrap() > 100, "{status}");
    assert!(!err.contains("panicked"), "{}", tail(&err));
}

fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(3000)..]
}

#[test]
fn sigterm_stops_the_vm_cleanly() {
    if kvm_or_skip("sigterm").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // The guest waits for a console line that never comes.
    let mut args = base_args(&guest().elf, dir.path(), "tg.echo");
    args.extend(["--agent-socket".into(), s(&sock)]);
    let mut child = spawn(&args);
    let mut c = connect(&sock);
    read_until(&mut c, b"tg:console-ready\n");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "signal", "{status}");
    assert_eq!(status["signal"], libc::SIGTERM, "{status}");
}

#[test]
fn guest_reset_ends_the_vm() {
    if kvm_or_skip("reset").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&guest().elf, dir.path(), "tg.quick");
    // Without --debug-exit, the guest's exit falls through to an i8042 reset.
    args.retain(|a| a != "--debug-exit");
    let mut child = spawn(&args);
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "guest_reset", "{status}");
}

/// Linux's poweroff without ACPI: every CPU halts with interrupts off. KVM
/// keeps such a vCPU inside the kernel; hyper-vmm must still notice and exit.
#[test]
fn a_guest_halted_for_good_ends_the_vm() {
    if kvm_or_skip("halt").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = base_args(&guest().elf, dir.path(), "tg.halt");
    let mut child = spawn(&args);
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "guest_halt", "{status}");
    let console = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert!(console.contains("tg: halting"), "{console}");
}

fn expect_error(args: &[String], dir: &Path, needle: &str) {
    expect_error_any(args, dir, &[needle]);
}

fn expect_error_any(args: &[String], dir: &Path, needles: &[&str]) {
    let mut child = spawn(args);
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    let (_, err) = output(child);
    assert_eq!(st.code(), Some(1), "{st:?} {err}");
    let status = status(&dir.join("status.json"));
    assert_eq!(status["reason"], "error", "{status}");
    let msg = status["message"].as_str().unwrap();
    assert!(
        needles.iter().any(|n| msg.contains(n)),
        "{msg:?} should mention one of {needles:?}"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    if kvm_or_skip("errors").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A text file as the kernel.
    let text = d.join("notakernel");
    std::fs::write(&text, "#!/bin/sh\n").unwrap();
    expect_error(&base_args(&text, d, ""), d, "is not a kernel");
    // An ELF program, not a kernel (the VMM binary itself): refused either
    // for its entry address (a PIE entry sits low) or for the missing PVH
    // note, depending on how the binary was linked.
    expect_error_any(
        &base_args(Path::new(VMM), d, ""),
        d,
        &["no PVH entry note", "is not a kernel"],
    );
    // A missing disk.
    let mut a = base_args(&guest().elf, d, "");
    a.extend(["--disk".into(), "path=/nonexistent/disk.img,id=x".into()]);
    expect_error(&a, d, "/nonexistent/disk.img");
    // An unreadable disk (a directory).
    let mut a = base_args(&guest().elf, d, "");
    a.extend(["--disk".into(), format!("path={},id=x", d.display())]);
    expect_error(&a, d, &d.display().to_string());
    // More memory than the host has.
    let mut a = base_args(&guest().elf, d, "");
    let i = a.iter().position(|x| x == "64").unwrap();
    a[i] = (1u64 << 20).to_string();
    expect_error(&a, d, "larger than this host's RAM");
    // An initramfs that does not fit.
    let big = d.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let mut a = base_args(&guest().elf, d, "");
    a.extend(["--initrd".into(), s(&big)]);
    expect_error(&a, d, "does not fit");
}

/// A test guest waiting on its console (`tg.echo`), its first line read
/// (so the vCPUs and the event loop are past their set-up), started with
/// `extra` flags.
struct EchoVm {
    dir: tempfile::TempDir,
    child: std::process::Child,
    _conn: UnixStream,
}

impl EchoVm {
    fn start(cmdline: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let mut args = base_args(&guest().elf, dir.path(), cmdline);
        args.extend(["--agent-socket".into(), s(&sock)]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = spawn(&args);
        let mut conn = connect(&sock);
        read_until(&mut conn, b"tg:console-ready\n");
        Self {
            dir,
            child,
            _conn: conn,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM; asserts a clean stop and returns the status JSON.
    fn stop(mut self) -> serde_json::Value {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = wait_timeout(&mut self.child, Duration::from_secs(10));
        let (_, err) = output(self.child);
        assert!(st.success(), "{st:?}: {err}");
        let status = status(&self.dir.path().join("status.json"));
        assert_eq!(status["reason"], "signal", "{status}");
        status
    }
}

/// Every thread of a running VM (the event loop and both vCPUs) runs
/// under a seccomp filter (mode 2) once the guest talks on its console;
/// `--no-seccomp` (the debugging switch) leaves them unfiltered, so the
/// check can fail.
#[test]
fn every_thread_of_a_running_vm_is_under_its_seccomp_filter() {
    if kvm_or_skip("seccomp threads").is_none() {
        return;
    }
    for filtered in [true, false] {
        let mut extra = vec!["--vcpus", "2"];
        if !filtered {
            extra.push("--no-seccomp");
        }
        let vm = EchoVm::start("tg.echo tg.cpus=2", &extra);
        let modes = seccomp_modes(vm.pid());
        vm.stop();
        let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"vcpu0") && names.contains(&"vcpu1") && names.len() >= 3,
            "{modes:?}"
        );
        let want = if filtered { "2" } else { "0" };
        assert!(
            modes.iter().all(|(_, m)| m == want),
            "filtered={filtered}: {modes:?}"
        );
    }
}

/// Once set up, the VMM lives in its own mount namespace whose root is
/// empty: nothing of the host's filesystem is reachable by path from it.
/// The host still reaches its agent socket by path (the guest's console
/// line arrives) and its /proc entry by host pid. `--no-jail` leaves it in
/// the host's namespace, so the check can fail.
#[test]
fn a_running_vm_sees_an_empty_root_in_its_own_mount_namespace() {
    if kvm_or_skip("mount jail").is_none() {
        return;
    }
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    for jailed in [true, false] {
        let extra: &[&str] = if jailed { &[] } else { &["--no-jail"] };
        let vm = EchoVm::start("tg.echo", extra);
        let pid = vm.pid();
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        let root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // The status file, opened before the jail, is still written.
        let status = vm.stop();
        assert!(status["vmm_rss_kib"].as_u64().is_some(), "{status}");
        if jailed {
            assert_ne!(ns, ours, "own mount namespace");
            assert!(root.is_empty(), "the jail's root holds {root:?}");
        } else {
            assert_eq!(ns, ours);
            assert!(root.iter().any(|e| e == "proc"), "{root:?}");
        }
    }
}

/// `--uid/--gid`: once set up and jailed the VMM runs as that uid with no
/// capabilities and no supplementary groups, and the VM still runs (its
/// console line arrives, SIGTERM stops it, the status file is written).
#[test]
fn a_vm_dropped_to_an_unprivileged_uid_runs_with_no_capabilities() {
    if kvm_or_skip("run as").is_none() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: dropping to another uid needs root");
        return;
    }
    let vm = EchoVm::start("tg.echo", &["--uid", "64123", "--gid", "64124"]);
    let st = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    vm.stop();
    assert_eq!(proc_field(&st, "Uid:"), ["64123"; 4], "{st}");
    assert_eq!(proc_field(&st, "Gid:"), ["64124"; 4], "{st}");
    assert!(proc_field(&st, "Groups:").is_empty(), "{st}");
    for cap in ["CapEff:", "CapPrm:"] {
        assert_eq!(proc_field(&st, cap), ["0000000000000000"], "{cap} {st}");
    }
}
