//! The KVM backend as hyperd uses it: the cdylib loaded through the plugin
//! loader, launching the real hyper-vmm with the freestanding test guest as
//! the "kernel". On kvm_pvm hosts `allow_pvm = true` is needed to launch
//! at all (a Linux guest would not boot; the test guest does).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_hypervisor::plugin::{testing, LoadedPlugin, HOST_BINARY};
use hyper_hypervisor::{
    AgentChannel, DiskSpec, Hypervisor, HypervisorError, ShareSpec, ShareTransport, Vm, VmHelper,
    VmSpec,
};

fn plugin() -> Arc<LoadedPlugin> {
    // The cdylib and the plugin host, built with the cargo running this test.
    let dir = testing::cargo_build(&["hyper-backend-kvm"]).unwrap_or_else(|e| panic!("{e}"));
    let so = dir.join("libhyper_backend_kvm.so");
    Arc::new(
        LoadedPlugin::load_with_host(&so, &dir.join(HOST_BINARY)).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn spec(dir: &Path, kernel: PathBuf, cmdline: &str) -> VmSpec {
    let initrd = initrd(dir, 4096);
    let disk = disk(dir, 16);
    VmSpec {
        id: format!("kvm-test-{}", dir.file_name().unwrap().to_string_lossy()),
        kernel,
        initrd,
        cmdline: cmdline.into(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![DiskSpec {
            path: disk,
            read_only: true,
            id: "hyper-rootfs0".into(),
        }],
        console_log: dir.join("console.log"),
        run_dir: dir.join("run"),
        nics: Vec::new(),
        shares: Vec::new(),
        cgroup: None,
        save_as_template: false,
    }
}

fn pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_cross_the_boundary() {
    let p = plugin();
    let err = p
        .configure(serde_json::json!({"vmm": "relative/path", "typo": 1}))
        .err()
        .expect("rejected");
    let text = err.to_string();
    assert!(text.contains("`vmm`") && text.contains("`typo`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_is_honest_and_quick() {
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM}))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = std::time::Instant::now();
    let report = hv.probe().await;
    assert!(t.elapsed() < Duration::from_secs(5));
    if pvm() {
        assert!(!report.usable);
        assert!(report.reason.contains("kvm_pvm"), "{}", report.reason);
    } else if Path::new("/dev/kvm").exists() {
        assert!(report.usable, "{}", report.reason);
    } else {
        assert!(report.reason.contains("/dev/kvm"), "{}", report.reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_refuses_pvm_by_default() {
    if !pvm() {
        eprintln!("SKIP: not a kvm_pvm host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM}))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = hv
        .launch(spec(dir.path(), guest().elf.clone(), ""))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, HypervisorError::Unavailable { reason, .. } if reason.contains("kvm_pvm")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_agent_channel_stats_and_exit() {
    if kvm_or_skip("plugin launch").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let s = spec(
        dir.path(),
        guest().elf.clone(),
        "tg.hello tg.echo tg.initrd=4096 tg.disk_serial=hyper-rootfs0 tg.sector=3",
    );
    let vm: Arc<dyn Vm> = Arc::from(hv.launch(s.clone()).await.expect("launch"));
    let info = vm.info();
    assert!(info.pid.is_some());
    let AgentChannel::UnixSocket(sock) = info.agent_channel.clone();
    assert!(vm.stats().await.unwrap().rss_bytes > 0);
    let echoed = tokio::task::spawn_blocking(move || {
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut sent = false;
        while !got.ends_with(b"echo:via-plugin\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            if !sent && got.ends_with(b"tg:console-ready\n") {
                c.write_all(b"via-plugin\n").unwrap();
                sent = true;
            }
        }
        got
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&echoed).contains("echo:via-plugin"));
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("guest stops by itself")
        .unwrap();
    // The guest's exit falls through to an i8042 reset (no debug-exit port
    // through the plugin): a clean stop.
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let log = std::fs::read_to_string(&s.console_log).unwrap();
    assert!(log.contains("tg: done failed=0"), "{log}");
    assert!(log.contains("hyper.channel=/dev/hvc0"), "{log}");
    assert!(!s.run_dir.join("agent.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_running_vm() {
    if kvm_or_skip("plugin shutdown").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    // Waits for a console line forever.
    let vm = hv
        .launch(spec(dir.path(), guest().elf.clone(), "tg.echo"))
        .await
        .expect("launch");
    tokio::time::timeout(Duration::from_secs(15), vm.shutdown(Duration::from_secs(5)))
        .await
        .expect("bounded")
        .unwrap();
    let exit = vm.wait().await.unwrap();
    assert_eq!(exit.code, Some(0), "SIGTERM is a clean stop: {exit:?}");
    let status = status(&dir.path().join("run/vmm-status.json"));
    assert_eq!(status["reason"], "signal", "{status}");
}

/// A cgroup of this host's pids hierarchy (v1 `pids`, else v2), made for
/// one test and removed when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mountinfo.lines().find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            let point = before.split_whitespace().nth(4)?;
            let mut after = after.split_whitespace();
            let fstype = after.next()?;
            let options = after.nth(1)?;
            let v1_pids = fstype == "cgroup" && options.split(',').any(|o| o == "pids");
            v1_pids.then(|| PathBuf::from(point))
        });
        let mount = mount.or_else(|| {
            mountinfo.lines().find_map(|l| {
                let (before, after) = l.split_once(" - ")?;
                after
                    .starts_with("cgroup2 ")
                    .then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap_or("")))
            })
        })?;
        let dir = mount.join(name);
        std::fs::create_dir(&dir).ok()?;
        Some(Self(dir))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// hyper-vmm starts in the cgroup the spec names, with no_new_privs and
/// core dumps off (the kit's `confine_vmm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vmm_starts_in_the_specs_cgroup_with_no_new_privs() {
    if kvm_or_skip("plugin cgroup").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hyper-kvm-test-{}", std::process::id());
    let Some(cgroup) = TestCgroup::new(&name) else {
        eprintln!("skipped: cannot make a cgroup here (not root?)");
        return;
    };
    let hv = plugin()
        .configure(
            serde_json::json!({"vmm": VMM, "allow_pvm": true, "vmm_uid": 64125, "vmm_gid": 64126}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = spec(dir.path(), guest().elf.clone(), "tg.echo");
    s.cgroup = Some(hyper_hypervisor::CgroupPlacement {
        procs_files: vec![cgroup.0.join("cgroup.procs")],
    });
    let vm = hv.launch(s).await.expect("launch");
    let pid = vm.info().pid.expect("a pid");
    let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    // vmm_uid/vmm_gid: it drops once set up and jailed, just after it binds
    // the agent socket that ends the launch; the host still reads /proc.
    let mut uid_line = String::new();
    for _ in 0..500 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        uid_line = st
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or("")
            .to_string();
        if uid_line.contains("64125") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stats = vm.stats().await;
    vm.kill().await.unwrap();
    let _ = vm.wait().await;
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    assert!(own.contains(&name), "{own}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]),
        "{status}"
    );
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["64125"; 4],
        "{uid_line}"
    );
    assert!(stats.is_ok(), "stats of a dropped VMM: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_get_clear_errors() {
    if kvm_or_skip("plugin errors").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let base = spec(dir.path(), guest().elf.clone(), "");
    let text = dir.path().join("notakernel");
    std::fs::write(&text, "hello").unwrap();
    let mut cases: Vec<(VmSpec, &str)> = Vec::new();
    let mut s = base.clone();
    s.kernel = text;
    cases.push((s, "is not a kernel"));
    let mut s = base.clone();
    s.disks[0].path = "/nonexistent/rootfs.img".into();
    cases.push((s, "/nonexistent/rootfs.img"));
    let mut s = base.clone();
    s.memory_mib = u32::MAX;
    cases.push((s, "larger than this host's RAM"));
    let mut s = base.clone();
    s.disks[0].id = "no spaces allowed".into();
    cases.push((s, "disk id"));
    for (s, needle) in cases {
        let err = hv.launch(s).await.err().expect("refused");
        assert!(matches!(err, HypervisorError::InvalidSpec(_)), "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    // Missing hyper-vmm binary.
    let hv = plugin()
        .configure(serde_json::json!({"vmm": "/nonexistent/hyper-vmm", "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = hv.launch(base).await.err().expect("refused");
    assert!(err.to_string().contains("/nonexistent/hyper-vmm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_is_taken_over_by_pid_and_start_time() {
    if kvm_or_skip("plugin recover").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(hv.capabilities().recover);
    let spec = spec(dir.path(), guest().elf.clone(), "tg.echo");
    let vm = hv.launch(spec.clone()).await.expect("launch");
    let info = vm.info();
    let pid = info.pid.expect("a VMM process");
    let start = hyper_hypervisor::adopt::process_start_time(pid);
    // What a crashed hyperd leaves: the VMM runs on, nobody tracks it.
    drop(vm);

    let wrong = hv
        .recover(spec.clone(), info.clone(), start.map(|s| s + 1))
        .await;
    assert!(
        matches!(wrong, Err(HypervisorError::NotFound(_))),
        "a recycled pid must not be adopted: {:?}",
        wrong.as_ref().map(|vm| vm.info())
    );
    let vm = hv
        .recover(spec.clone(), info.clone(), start)
        .await
        .expect("recover");
    assert_eq!(vm.info().agent_channel, info.agent_channel);
    assert!(vm.stats().await.unwrap().rss_bytes > 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), vm.wait())
            .await
            .is_err(),
        "still running"
    );
    tokio::time::timeout(Duration::from_secs(15), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    vm.wait().await.unwrap();
    drop(vm);
    assert!(matches!(
        hv.recover(spec, info, start).await,
        Err(HypervisorError::NotFound(_))
    ));
}

/// A named netns with `eth0` (MAC given, up) and its veth peer `hvx0`, as
/// CNI's bridge plugin leaves a pod's namespace; removed on drop. None
/// (after saying why) where namespaces cannot be made.
struct PodNs {
    name: String,
    path: PathBuf,
}

impl PodNs {
    fn new(tag: &str, mac: &str) -> Option<PodNs> {
        use hyper_hypervisor::nic::netns;
        let name = format!("hvkvmtest{tag}{}", std::process::id());
        let path = match netns::create(&name) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIP: cannot create a netns here (needs root): {e}");
                return None;
            }
        };
        let pod = PodNs { name, path };
        for args in [
            vec![
                "link", "add", "eth0", "type", "veth", "peer", "name", "hvx0",
            ],
            vec!["link", "set", "eth0", "address", mac, "up"],
            vec!["link", "set", "hvx0", "up"],
        ] {
            let st = std::process::Command::new("ip")
                .args(["-n", &pod.name])
                .args(&args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        Some(pod)
    }

    /// `ip -n NS CMD…` output.
    fn ip(&self, args: &[&str]) -> String {
        let o = std::process::Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = hyper_hypervisor::nic::netns::remove(&self.path);
    }
}

/// `VmSpec.nics` end to end: the plugin makes the tap inside a named netns
/// with the backend kit, joins it to `eth0` (a veth, as CNI's bridge plugin
/// leaves it) with tc redirects, and hands it to hyper-vmm; the test guest's
/// frame comes out of the veth's other end, and a frame sent into it
/// reaches the guest through RX. After the VM ends the tap is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_joined_to_a_netns_carries_frames_both_ways() {
    use hyper_hypervisor::nic::netns;
    use hyper_hypervisor::NicSpec;
    if kvm_or_skip("plugin nic").is_none() {
        return;
    }
    let Some(pod) = PodNs::new("a", "02:48:59:50:45:07") else {
        return;
    };
    let (name, ns) = (pod.name.clone(), pod.path.clone());
    let mac = [0x02, 0x48, 0x59, 0x50, 0x45, 0x07];
    let mac_str = "02:48:59:50:45:07";
    let pkt = netns::run_in(&ns, || packet_socket("hvx0"))
        .unwrap()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = spec(dir.path(), guest().elf.clone(), "tg.hello");
    s.nics = vec![NicSpec {
        netns: ns.clone(),
        peer: "eth0".into(),
        device: "tap0".into(),
        mac: mac_str.into(),
        mtu: 1500,
    }];
    let vm = hv.launch(s.clone()).await.expect("launch");
    let tc = std::process::Command::new("tc")
        .args(["-n", &name, "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(
        tc.contains("mirred"),
        "eth0 is not redirected to the tap:\n{tc}"
    );
    let got_tx = tokio::task::spawn_blocking(move || {
        let seen = guest_frame_seen(&pkt, mac);
        if seen {
            send_frame_to_guest(&pkt, mac);
        }
        seen
    })
    .await
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("guest stops by itself")
        .unwrap();
    let log = std::fs::read_to_string(&s.console_log).unwrap_or_default();
    assert!(got_tx, "the guest's frame never left eth0's peer:\n{log}");
    assert_eq!(exit.code, Some(0), "{exit:?}\n{log}");
    for check in ["net-tx", "net-rx"] {
        assert!(
            log.contains(&format!("tg: ok {check}\n")),
            "{check}:\n{log}"
        );
    }
    assert!(log.contains("tg: done failed=0"), "{log}");
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("tap0"), "the tap outlived the VM:\n{links}");
}

/// A launch that fails after the tap was made (hyper-vmm refuses an
/// initramfs that does not fit) leaves nothing in the pod's netns: no tap,
/// no redirect on the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_launch_leaves_no_tap_and_no_redirect() {
    use hyper_hypervisor::NicSpec;
    if kvm_or_skip("plugin nic cleanup").is_none() {
        return;
    }
    let Some(pod) = PodNs::new("b", "02:48:59:50:45:08") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = spec(dir.path(), guest().elf.clone(), "tg.hello");
    let big = dir.path().join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    s.initrd = big;
    s.nics = vec![NicSpec {
        netns: pod.path.clone(),
        peer: "eth0".into(),
        device: "tap0".into(),
        mac: "02:48:59:50:45:08".into(),
        mtu: 1500,
    }];
    let err = hv.launch(s).await.err().expect("refused");
    assert!(err.to_string().contains("does not fit"), "{err}");
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("tap0"), "a tap was left:\n{links}");
    let tc = std::process::Command::new("tc")
        .args(["-n", &pod.name, "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(!tc.contains("mirred"), "the peer kept its redirect:\n{tc}");
}

/// NIC specs that cannot work are refused before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nics_are_refused_before_launch() {
    use hyper_hypervisor::NicSpec;
    if kvm_or_skip("plugin nic errors").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let nic = NicSpec {
        netns: "/run/netns/hyper-none".into(),
        peer: "eth0".into(),
        device: "tap0".into(),
        mac: "02:00:00:00:00:01".into(),
        mtu: 1500,
    };
    let base = spec(dir.path(), guest().elf.clone(), "");
    let mut cases: Vec<(VmSpec, &str)> = Vec::new();
    let mut s = base.clone();
    s.nics = vec![NicSpec {
        mac: "01:00:5e:00:00:01".into(),
        ..nic.clone()
    }];
    cases.push((s, "unicast"));
    let mut s = base.clone();
    s.nics = vec![nic.clone(); 6];
    cases.push((s, "device slots"));
    let mut s = base.clone();
    s.nics = vec![
        nic.clone(),
        NicSpec {
            device: "tap1".into(),
            ..nic.clone()
        },
    ];
    cases.push((s, "already carries another NIC"));
    let mut s = base.clone();
    s.nics = vec![NicSpec {
        netns: "/nonexistent/netns".into(),
        ..nic.clone()
    }];
    cases.push((s, "/nonexistent/netns"));
    for (s, needle) in cases {
        let err = hv.launch(s).await.err().expect("refused");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
}

/// A spec with one share (tag `vol-a`) of a fresh directory holding
/// `hello`; `None` where virtiofsd or /dev/kvm is missing.
fn share_spec(dir: &Path, cmdline: &str) -> Option<VmSpec> {
    kvm_or_skip("plugin shares")?;
    virtiofsd_or_skip()?;
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"HYPERTG-FS-HOST and more\n").unwrap();
    let mut s = spec(dir, guest().elf.clone(), cmdline);
    s.shares.push(ShareSpec {
        tag: "vol-a".into(),
        source: shared,
        read_only: false,
    });
    Some(s)
}

/// Processes whose command line mentions `needle` (the run directory).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let want = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(want.len()).any(|w| w == want))
        })
        .collect()
}

fn assert_nothing_left(run: &Path) {
    assert!(processes_mentioning(run).is_empty(), "left running");
    for f in ["vfs-vol-a.sock", "vfs-vol-a.sock.pid", "virtiofsd.json"] {
        assert!(!run.join(f).exists(), "{f} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_is_served_by_a_supervised_virtiofsd_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = share_spec(dir.path(), "tg.hello tg.fs_tag=vol-a") else {
        return;
    };
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true, "virtiofsd": VIRTIOFSD}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        hv.capabilities().share_transport,
        Some(ShareTransport::VirtioFs)
    );
    let vm = hv.launch(s.clone()).await.expect("launch");
    let exit = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("guest stops by itself")
        .unwrap();
    let log = std::fs::read_to_string(&s.console_log).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}\n{log}");
    assert_eq!(exit.helper_died, None);
    for check in ["fs-tag", "fs-init", "fs-lookup", "fs-read", "fs-write"] {
        assert!(
            log.contains(&format!("tg: ok {check}\n")),
            "{check}:\n{log}"
        );
    }
    assert!(log.contains("tg: done failed=0"), "{log}");
    let host = std::fs::read(dir.path().join("shared/hello")).unwrap();
    assert!(host.starts_with(b"HYPERTG-FS-GUEST"));
    assert_nothing_left(&s.run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_virtiofsd_stops_the_vm_with_helper_died() {
    let dir = tempfile::tempdir().unwrap();
    // The guest waits for a console line forever.
    let Some(s) = share_spec(dir.path(), "tg.echo") else {
        return;
    };
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    let vm = hv.launch(s.clone()).await.expect("launch");
    let socket = s.run_dir.join("vfs-vol-a.sock");
    let daemons: Vec<u32> = processes_mentioning(&socket)
        .into_iter()
        .filter(|&p| Some(p) != vm.info().pid)
        .collect();
    assert!(
        !daemons.is_empty(),
        "no virtiofsd serving {}",
        socket.display()
    );
    for pid in daemons {
        // SAFETY: kill(2) of a virtiofsd this test's VM depends on.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the VM stops")
        .unwrap();
    assert_eq!(exit.helper_died, Some(VmHelper::Virtiofsd), "{exit:?}");
    assert_nothing_left(&s.run_dir);
}

/// Polls `log` until the counting guest printed `n` counts.
async fn counted(log: &Path, n: usize) -> Vec<u64> {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = counts(log);
        if c.len() >= n {
            return c;
        }
        assert!(
            std::time::Instant::now() < end,
            "no {n} counts in {}: {}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_saved_restored_refused_when_damaged_and_recovered() {
    if kvm_or_skip("plugin templates").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hv = plugin()
        .configure(serde_json::json!({"vmm": VMM, "allow_pvm": true}))
        .unwrap_or_else(|e| panic!("{e}"));
    // What the core asks before it builds or restores a template.
    assert!(hv.capabilities().templates);
    let a = dir.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let mut sa = spec(&a, guest().elf.clone(), "tg.count");
    sa.save_as_template = true;
    let vm = hv.launch(sa).await.expect("launch");
    counted(&a.join("console.log"), 3).await;
    let tmpl = dir.path().join("template");
    std::fs::create_dir(&tmpl).unwrap();
    vm.save_template(&tmpl).await.expect("save_template");
    tokio::time::timeout(Duration::from_secs(15), vm.wait())
        .await
        .expect("the VM stopped after the save")
        .unwrap();
    let last = *counts(&a.join("console.log")).last().unwrap();

    // A damaged template is refused before anything starts.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut state = std::fs::read(tmpl.join("state")).unwrap();
    let mid = state.len() / 2;
    state[mid] ^= 1;
    std::fs::write(bad.join("state"), state).unwrap();
    std::fs::hard_link(tmpl.join("memory"), bad.join("memory")).unwrap();
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    let sc = spec(&c, guest().elf.clone(), "tg.count");
    let err = hv.restore(sc.clone(), &bad).await.err().expect("refused");
    assert!(
        matches!(&err, HypervisorError::TemplateRejected(m) if m.contains("checksum")),
        "{err}"
    );
    assert!(
        !sc.run_dir.exists(),
        "nothing was started for a refused template"
    );

    // A clone with its own disk, console and run directory carries on.
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let sb = spec(&b, guest().elf.clone(), "tg.count");
    let vm = hv.restore(sb.clone(), &tmpl).await.expect("restore");
    let got = counted(&b.join("console.log"), 2).await;
    assert!(
        got[0] == last + 1 || got[0] == last + 2,
        "saved after {last}, the clone printed {got:?}"
    );
    // hyperd restarts: the restored VM is taken over like any other.
    let info = vm.info();
    let start = hyper_hypervisor::adopt::process_start_time(info.pid.expect("a VMM process"));
    drop(vm);
    let vm = hv
        .recover(sb, info, start)
        .await
        .expect("recover a restored VM");
    let n = counts(&b.join("console.log")).len();
    counted(&b.join("console.log"), n + 1).await;
    tokio::time::timeout(Duration::from_secs(15), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    vm.wait().await.unwrap();
}
