//! hyper-vmm snapshots on this machine's /dev/kvm with the freestanding
//! test guest: a counting guest is saved and restored into a new VM (a new
//! process), where it counts on from where it was; damaged or foreign
//! snapshots are refused before any VM runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

const MEM: u64 = 64 << 20;

fn wait_counts(log: &Path, n: usize, child: &mut Child) -> Vec<u64> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let c = counts(log);
        if c.len() >= n {
            return c;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "hyper-vmm ended ({st}) before {n} counts; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < end, "no {n} counts in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0);
}

/// Boots a counting guest in `dir/a`, saves it into `dir/snap`; returns
/// the snapshot dir and the last count the guest printed before.
fn make_snapshot(dir: &Path) -> (PathBuf, u64) {
    make_snapshot_checked(dir, |_| {})
}

/// [`make_snapshot`], calling `running` with hyper-vmm's pid once the
/// guest counts, before the save is asked for.
fn make_snapshot_checked(dir: &Path, running: impl FnOnce(u32)) -> (PathBuf, u64) {
    let a = dir.join("a");
    let snap = dir.join("snap");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let req = dir.join("save-request");
    std::fs::write(&req, format!("{}\n", snap.display())).unwrap();
    let mut args = base_args(&guest().elf, &a, "tg.count");
    args.extend(["--save-request".into(), s(&req)]);
    let mut child = spawn(&args);
    wait_counts(&a.join("console.log"), 5, &mut child);
    running(child.id());
    signal(&child, libc::SIGUSR1);
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    let (_, err) = output(child);
    assert!(st.success(), "save: {st}; {err}");
    let status = status(&a.join("status.json"));
    assert_eq!(status["reason"], "saved", "{status}");
    let last = *counts(&a.join("console.log")).last().unwrap();
    assert_eq!(
        std::fs::metadata(snap.join("memory")).unwrap().len(),
        MEM,
        "the memory file holds all guest RAM"
    );
    (snap, last)
}

fn restore_args(dir: &Path, snap: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = base_args(&guest().elf, dir, "tg.count");
    args.extend(["--restore-from".into(), s(snap)]);
    args
}

#[test]
fn a_restored_guest_counts_on_from_where_it_was_saved() {
    if kvm_or_skip("a_restored_guest_counts_on_from_where_it_was_saved").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, last) = make_snapshot(dir.path());
    let memory_before = std::fs::read(snap.join("memory")).unwrap();

    let b = dir.path().join("b");
    let mut child = spawn(&restore_args(&b, &snap));
    let got = wait_counts(&b.join("console.log"), 3, &mut child);
    signal(&child, libc::SIGTERM);
    let st = wait_timeout(&mut child, Duration::from_secs(30));
    let (_, err) = output(child);
    assert!(st.success(), "{st}; {err}");
    let log = std::fs::read_to_string(b.join("console.log")).unwrap();
    assert!(!log.contains("tg: start"), "the guest booted again: {log}");
    // The count in flight when the vCPU paused may be half printed: the
    // restored guest finishes that line or prints the next one.
    assert!(
        got[0] == last + 1 || got[0] == last + 2,
        "saved after {last}, restored guest printed {got:?}"
    );
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    assert!(
        std::fs::read(snap.join("memory")).unwrap() == memory_before,
        "the restored guest wrote to the template's memory file (must be MAP_PRIVATE)"
    );
}

#[test]
fn damaged_or_foreign_snapshots_are_refused_before_the_guest_runs() {
    if kvm_or_skip("damaged_or_foreign_snapshots_are_refused_before_the_guest_runs").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (snap, _) = make_snapshot(dir.path());
    let state = std::fs::read(snap.join("state")).unwrap();

    type Mutate = fn(&Path, &[u8], &mut Vec<String>);
    let cases: [(&str, Mutate, &str); 6] = [
        (
            "truncated",
            |d, s, _| std::fs::write(d.join("state"), &s[..s.len() - 100]).unwrap(),
            "checksum",
        ),
        (
            "bitflip",
            |d, s, _| {
                let mut s = s.to_vec();
                let mid = s.len() / 2;
                s[mid] ^= 0x10;
                std::fs::write(d.join("state"), s).unwrap()
            },
            "checksum",
        ),
        (
            "version",
            |d, s, _| {
                let mut s = s.to_vec();
                s[8..12].copy_from_slice(&7u32.to_le_bytes());
                std::fs::write(d.join("state"), s).unwrap()
            },
            "format version 7",
        ),
        (
            "memory-truncated",
            |d, s, _| {
                std::fs::write(d.join("state"), s).unwrap();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("memory"))
                    .unwrap();
                f.set_len(MEM - 4096).unwrap();
            },
            "bytes, the snapshot says",
        ),
        (
            "other-memory-size",
            |d, s, args| {
                std::fs::write(d.join("state"), s).unwrap();
                let i = args.iter().position(|a| a == "--memory-mib").unwrap();
                args[i + 1] = "128".into();
            },
            "MiB of guest memory saved",
        ),
        (
            "other-devices",
            |d, s, args| {
                std::fs::write(d.join("state"), s).unwrap();
                let disk = disk(d, 8);
                args.extend(["--disk".into(), format!("path={},id=x", disk.display())]);
            },
            "devices",
        ),
    ];
    for (name, mutate, want) in cases {
        let case = dir.path().join(name);
        let csnap = case.join("snap");
        std::fs::create_dir_all(&csnap).unwrap();
        if name == "memory-truncated" {
            std::fs::copy(snap.join("memory"), csnap.join("memory")).unwrap();
        } else {
            std::fs::hard_link(snap.join("memory"), csnap.join("memory")).unwrap();
        }
        let run = case.join("run");
        let mut args = restore_args(&run, &csnap);
        mutate(&csnap, &state, &mut args);
        let mut child = spawn(&args);
        let st = wait_timeout(&mut child, Duration::from_secs(30));
        let (_, err) = output(child);
        assert_eq!(st.code(), Some(5), "{name}: {st}; {err}");
        let status = status(&run.join("status.json"));
        assert_eq!(status["reason"], "snapshot_rejected", "{name}: {status}");
        let msg = status["message"].as_str().unwrap();
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            counts(&run.join("console.log")).is_empty(),
            "{name}: the guest ran"
        );
    }
}

/// A VM launched to be saved runs every thread under its seccomp filter
/// but outside the mount jail (it writes the snapshot by path), and saves
/// under those filters; the clone restored from it runs exactly like a
/// cold VM: every thread filtered, in its own mount namespace with an
/// empty root, and its status file still written.
#[test]
fn a_template_vm_is_filtered_and_its_restored_clone_is_filtered_and_jailed() {
    if kvm_or_skip("a_template_vm_is_filtered_and_its_restored_clone_is_filtered_and_jailed")
        .is_none()
    {
        return;
    }
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let all_filtered = |pid: u32| {
        let modes = seccomp_modes(pid);
        assert!(modes.iter().any(|(n, _)| n == "vcpu0"), "{modes:?}");
        assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");
    };
    let dir = tempfile::tempdir().unwrap();
    let (snap, _) = make_snapshot_checked(dir.path(), |pid| {
        all_filtered(pid);
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        assert_eq!(ns, ours, "a VM to be saved is not jailed");
    });

    let b = dir.path().join("b");
    let mut child = spawn(&restore_args(&b, &snap));
    wait_counts(&b.join("console.log"), 3, &mut child);
    let pid = child.id();
    all_filtered(pid);
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    signal(&child, libc::SIGTERM);
    let st = wait_timeout(&mut child, Duration::from_secs(30));
    let (_, err) = output(child);
    assert!(st.success(), "{st}; {err}");
    assert_ne!(ns, ours, "the restored clone has its own mount namespace");
    assert!(root.is_empty(), "the clone's jail root holds {root:?}");
    let status = status(&b.join("status.json"));
    assert_eq!(status["reason"], "signal", "{status}");
    assert!(status["vmm_rss_kib"].as_u64().is_some(), "{status}");
}
