//! Launches the real QEMU installed on this host.
//!
//! No guest kernel is needed: the "kernel" is a 200-byte PVH ELF made here
//! whose entry point halts the CPU forever. QEMU boots it like a vmlinux (the
//! PVH note is what it looks for), so launch, QMP, stats, shutdown, kill and
//! wait all run against a real, running VM. Booting the real hyperkernel is
//! the e2e suite's job.
//!
//! The NIC tests (root only) give the VM a tap in a network namespace made
//! here and check it from the host (QMP and the tap itself).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_backend_qemu::config::{AccelSetting, Machine};
use hyper_backend_qemu::{QemuConfig, QemuHypervisor};
use hyper_hypervisor::nic::{self, netns};
use hyper_hypervisor::plugin::{testing, LoadedPlugin, HOST_BINARY};
use hyper_hypervisor::{AgentChannel, DiskSpec, Hypervisor, HypervisorError, NicSpec, Vm, VmSpec};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn have_qemu() -> bool {
    if Path::new(QEMU).exists() {
        return true;
    }
    eprintln!("skipped: {QEMU} is not installed");
    false
}

/// A minimal ELF64 with a PT_LOAD segment of `cli; hlt; jmp .-1` at 1 MiB
/// and the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) pointing at it.
fn pvh_stub() -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    let code: [u8; 4] = [0xFA, 0xF4, 0xEB, 0xFD];
    let phoff = 64u64;
    let code_off = phoff + 2 * 56;
    let note_off = code_off + 4; // already 4-aligned
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&8u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&ENTRY.to_le_bytes());

    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&phoff.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 2, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    let phdr =
        |elf: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            elf.extend_from_slice(&kind.to_le_bytes());
            elf.extend_from_slice(&flags.to_le_bytes());
            for v in [off, addr, addr, size, size, align] {
                elf.extend_from_slice(&v.to_le_bytes());
            }
        };
    phdr(&mut elf, 1, 5, code_off, ENTRY, code.len() as u64, 1); // PT_LOAD, R+X
    phdr(&mut elf, 4, 4, note_off, 0, note.len() as u64, 4); // PT_NOTE
    elf.extend_from_slice(&code);
    elf.extend_from_slice(&note);
    elf
}

struct Fixture {
    dir: tempfile::TempDir,
    spec: VmSpec,
}

fn fixture(kernel: &[u8]) -> Fixture {
    // Short: socket paths must stay under 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("hq")
        .tempdir_in("/tmp")
        .unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let run_dir = dir.path().join("vm");
    std::fs::create_dir(&run_dir).unwrap();
    let spec = VmSpec {
        id: "t1".into(),
        kernel: file("kernel", kernel),
        initrd: file("initrd", b"not really an initramfs"),
        cmdline: "quiet".into(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![
            DiskSpec {
                path: file("ro.img", &[0; 65536]),
                read_only: true,
                id: "rootfs".into(),
            },
            DiskSpec {
                path: file("rw.img", &[0; 65536]),
                read_only: false,
                id: "scratch".into(),
            },
        ],
        console_log: dir.path().join("console.log"),
        run_dir,
        nics: Vec::new(),
        shares: Vec::new(),
        cgroup: None,
        save_as_template: false,
    };
    Fixture { dir, spec }
}

fn tcg(machine: Machine) -> QemuHypervisor {
    QemuHypervisor::new(QemuConfig {
        machine,
        accel: AccelSetting::Tcg,
        ..QemuConfig::default()
    })
}

fn run_files(run_dir: &Path) -> Vec<PathBuf> {
    ["qmp.sock", "agent.sock", "qemu.pid"]
        .iter()
        .map(|f| run_dir.join(f))
        .filter(|p| p.exists())
        .collect()
}

fn alive(pid: u32) -> bool {
    hyper_backend_qemu::procfs::is_running(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failure_reports_qemu_s_own_error() {
    if !have_qemu() {
        return;
    }
    let f = fixture(b"this is not a kernel");
    let err = match tcg(Machine::Microvm).launch(f.spec.clone()).await {
        Ok(vm) => {
            let _ = vm.kill().await;
            panic!("QEMU started with a bogus kernel");
        }
        Err(e) => e,
    };
    let HypervisorError::LaunchFailed(message) = &err else {
        panic!("expected LaunchFailed, got {err:?}")
    };
    eprintln!("{message}");
    // Debian's QEMU 7.2 says "qemu: linux kernel too old to load a ram disk".
    assert!(message.contains("QEMU exited (exit code 1)"), "{message}");
    assert!(
        message.contains("QEMU said:") && message.contains("kernel"),
        "{message}"
    );
    assert!(
        run_files(&f.spec.run_dir).is_empty(),
        "{:?}",
        run_files(&f.spec.run_dir)
    );
    assert!(f.spec.run_dir.join("qemu.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_is_refused_before_qemu_runs() {
    let f = fixture(b"x");
    let mut spec = f.spec.clone();
    spec.kernel = f.dir.path().join("missing-kernel");
    let err = tcg(Machine::Microvm)
        .launch(spec)
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, HypervisorError::InvalidSpec(m) if m.contains("missing-kernel")),
        "{err:?}"
    );
    assert!(!f.spec.run_dir.join("qemu.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_lifecycle() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    let probe = hv.probe().await;
    assert!(probe.usable, "{probe:?}");
    assert_eq!(probe.details.get("accel").map(String::as_str), Some("tcg"));
    assert!(probe.details.contains_key("version"));

    let vm: Arc<dyn Vm> = Arc::from(hv.launch(f.spec.clone()).await.expect("launch"));
    let info = vm.info();
    assert_eq!(info.id, "t1");
    assert_eq!(
        info.agent_channel,
        AgentChannel::UnixSocket(f.spec.run_dir.join("agent.sock"))
    );
    let pid = info.pid.expect("pid");
    assert!(alive(pid));
    let pid_file = std::fs::read_to_string(f.spec.run_dir.join("qemu.pid")).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    assert_eq!(run_files(&f.spec.run_dir).len(), 3);
    // The agent socket accepts a connection (nothing speaks on it here).
    tokio::net::UnixStream::connect(f.spec.run_dir.join("agent.sock"))
        .await
        .expect("agent socket");

    let stats = vm.stats().await.expect("stats");
    assert!(stats.rss_bytes > 1 << 20, "{stats:?}");

    // Several waiters all get the one exit.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let vm = vm.clone();
            tokio::spawn(async move { vm.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()));

    // The stub ignores ACPI power-down, so this ends in kill() after the grace.
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        vm.shutdown(Duration::from_millis(500)),
    )
    .await
    .expect("shutdown is bounded")
    .expect("shutdown");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let mut exits = Vec::new();
    for w in waiters {
        exits.push(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert!(exits.windows(2).all(|w| w[0] == w[1]), "{exits:?}");
    assert_eq!(vm.wait().await.unwrap(), exits[0]);
    assert!(!alive(pid));
    assert!(
        run_files(&f.spec.run_dir).is_empty(),
        "{:?}",
        run_files(&f.spec.run_dir)
    );
    assert!(vm.stats().await.is_err());
    // Stopping a stopped VM is fine.
    vm.kill().await.unwrap();
    vm.shutdown(Duration::from_millis(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_kill() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let vm = tcg(Machine::Q35)
        .launch(f.spec.clone())
        .await
        .expect("launch");
    let pid = vm.info().pid.unwrap();
    assert!(alive(pid));
    tokio::time::timeout(Duration::from_secs(20), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    // `quit` answered, so QEMU exited by itself.
    assert_eq!(vm.wait().await.unwrap().code, Some(0));
    assert!(!alive(pid));
    assert!(run_files(&f.spec.run_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_launch_in_the_same_run_dir_kills_the_first() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    let first = hv.launch(f.spec.clone()).await.expect("first launch");
    let first_pid = first.info().pid.unwrap();
    let second = hv.launch(f.spec.clone()).await.expect("second launch");
    let second_pid = second.info().pid.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), first.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(!alive(first_pid));
    assert!(alive(second_pid));
    // The first VM's cleanup must not have taken the second one's files.
    assert_eq!(run_files(&f.spec.run_dir).len(), 3);
    second.kill().await.unwrap();
    second.wait().await.unwrap();
    assert!(run_files(&f.spec.run_dir).is_empty());
}

/// The way hyperd runs it: the cdylib loaded through the plugin loader, the
/// VM driven on the plugin's own runtime (its own tokio, its own SIGCHLD
/// handling), every call crossing the JSON boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_plugin_boundary() {
    if !have_qemu() {
        return;
    }
    // The cdylib and the plugin host, built with the cargo running this test.
    let dir = testing::cargo_build(&["hyper-backend-qemu"]).unwrap_or_else(|e| panic!("{e}"));
    let so = dir.join("libhyper_backend_qemu.so");
    assert!(so.exists(), "{} was not built", so.display());
    let plugin = Arc::new(
        LoadedPlugin::load_with_host(&so, &dir.join(HOST_BINARY)).unwrap_or_else(|e| panic!("{e}")),
    );
    let hv = plugin
        .configure(serde_json::json!({"accel": "tcg"}))
        .unwrap_or_else(|e| panic!("{e}"));
    let f = fixture(&pvh_stub());
    let vm: Arc<dyn Vm> = Arc::from(hv.launch(f.spec.clone()).await.expect("launch"));
    let pid = vm.info().pid.unwrap();
    assert!(alive(pid));
    assert!(vm.stats().await.unwrap().rss_bytes > 0);
    let waiter = {
        let vm = vm.clone();
        tokio::spawn(async move { vm.wait().await })
    };
    tokio::time::timeout(Duration::from_secs(20), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(vm.wait().await.unwrap(), exit);
    assert!(!alive(pid));
    assert!(run_files(&f.spec.run_dir).is_empty());
    // Launch errors cross the boundary typed.
    let mut bad = f.spec.clone();
    bad.vcpus = 0;
    assert!(matches!(
        hv.launch(bad).await,
        Err(HypervisorError::InvalidSpec(_))
    ));

    // A NIC, made inside the plugin (its own tokio, a blocking thread per
    // namespace visit): the tap lives exactly as long as QEMU.
    if !root() {
        return;
    }
    let (_pod, nic_spec) = pod_netns("p", "tap-p");
    let mut spec = f.spec.clone();
    spec.id = "t1-nic".into();
    spec.nics = vec![nic_spec.clone()];
    let vm = hv.launch(spec).await.expect("launch with a NIC");
    let pid = vm.info().pid.unwrap();
    let tap = nic::link::info(&nic_spec.netns, "tap-p").unwrap();
    assert!(tap.up && tap.carrier, "{tap:?}");
    assert!(holds_tap(&pid.to_string(), "tap-p"));
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    assert!(tap_gone(&nic_spec), "tap-p outlived QEMU");
}

#[tokio::test]
async fn auto_accel_explains_its_choice() {
    if !have_qemu() {
        return;
    }
    let report = QemuHypervisor::new(QemuConfig::default()).probe().await;
    eprintln!("{report:?}");
    assert!(report.usable, "{report:?}");
    let accel = report.details.get("accel").map(String::as_str);
    let reason = report.details.get("accel_reason").map(String::as_str);
    if hyper_backend_qemu::accel::is_kvm_pvm() {
        assert_eq!(accel, Some("tcg"));
        assert_eq!(reason, Some(hyper_backend_qemu::accel::PVM_REASON));
    } else {
        assert!(matches!(accel, Some("kvm" | "tcg")), "{report:?}");
    }
}

/// A pod's network namespace as the core would leave it: `eth0` (one end of
/// a veth pair, as CNI's bridge plugin makes it) in a namespace of its own.
/// Removed on drop.
struct PodNetns {
    path: PathBuf,
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = netns::remove(&self.path);
    }
}

fn root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new(nic::tap::TUN_DEVICE).exists() {
        eprintln!("skipped: needs root and {}", nic::tap::TUN_DEVICE);
    }
    root
}

/// A namespace with `eth0` and a NIC spec joining tap `device` to it.
fn pod_netns(tag: &str, device: &str) -> (PodNetns, NicSpec) {
    let name = format!("hyper-qtest-{tag}-{}", std::process::id());
    let _ = netns::remove(&netns::path(&name));
    let path = netns::create(&name).unwrap();
    let pod = PodNetns { path: path.clone() };
    nic::link::add_veth(&path, "eth0", "wire0").unwrap();
    let mac = nic::link::info(&path, "eth0").unwrap().mac.unwrap();
    let spec = NicSpec {
        netns: path,
        peer: "eth0".into(),
        device: device.into(),
        mac: mac.to_string(),
        mtu: 1500,
    };
    (pod, spec)
}

fn tap_gone(spec: &NicSpec) -> bool {
    matches!(
        nic::link::info(&spec.netns, &spec.device),
        Err(nic::NicError::NoSuchLink { .. })
    )
}

/// Whether process `pid` holds a tun descriptor attached to `device`
/// (`/proc/PID/fdinfo` of a tun fd has an `iff:` line).
fn holds_tap(pid: &str, device: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    let wanted = format!("iff:\t{device}\n");
    entries
        .flatten()
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|info| info.contains(&wanted)))
}

/// Boots the stub with one NIC on `machine` and checks, from the host, that
/// the guest's virtio-net exists with the pod's MAC on QEMU's side of a tap
/// that lives in the pod's namespace, joined to eth0, held by QEMU alone and
/// gone with it.
async fn boots_with_a_nic(machine: Machine, tag: &str) {
    if !have_qemu() || !root() {
        return;
    }
    let device = format!("tap-{tag}");
    let (pod, nic_spec) = pod_netns(tag, &device);
    let mut f = fixture(&pvh_stub());
    f.spec.nics = vec![nic_spec.clone()];
    let vm = tcg(machine)
        .launch_qemu(f.spec.clone())
        .await
        .expect("launch");

    // The guest's NIC, as QEMU's device model has it.
    let filters = vm
        .qmp_command("query-rx-filter", Duration::from_secs(20))
        .await
        .expect("query-rx-filter");
    let nics = filters.as_array().expect("an array");
    assert_eq!(nics.len(), 1, "{filters}");
    assert_eq!(nics[0]["name"], "nic0", "{filters}");
    assert_eq!(nics[0]["main-mac"], nic_spec.mac.as_str(), "{filters}");

    // The tap, in the pod's namespace: up, with carrier (someone holds it),
    // the peer's MTU; QEMU holds it, this process no longer does.
    let tap = nic::link::info(&pod.path, &device).unwrap();
    assert!(tap.up && tap.carrier, "{tap:?}");
    assert_eq!(tap.mtu, 1500);
    let pid = vm.pid();
    assert!(
        holds_tap(&pid.to_string(), &device),
        "QEMU does not hold {device}"
    );
    assert!(
        !holds_tap("self", &device),
        "the backend kept a copy of {device}"
    );

    // The tap ends with QEMU; the peer stays (the core removes the netns).
    tokio::time::timeout(Duration::from_secs(20), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    vm.wait().await.unwrap();
    assert!(tap_gone(&nic_spec), "{device} outlived QEMU");
    assert!(nic::link::info(&pod.path, "eth0").is_ok());
    assert!(netns::remove(&pod.path).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_nic_is_a_tap_in_the_pod_netns() {
    boots_with_a_nic(Machine::Microvm, "m").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_nic_is_a_tap_in_the_pod_netns() {
    boots_with_a_nic(Machine::Q35, "q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_launch_with_a_nic_leaves_no_tap() {
    if !have_qemu() || !root() {
        return;
    }
    let (_pod, nic_spec) = pod_netns("f", "tap-f");

    // QEMU starts (the tap is open and joined) and dies on the bogus kernel.
    let mut f = fixture(b"this is not a kernel");
    f.spec.nics = vec![nic_spec.clone()];
    let err = tcg(Machine::Microvm)
        .launch(f.spec.clone())
        .await
        .err()
        .expect("a bogus kernel must not boot");
    assert!(matches!(&err, HypervisorError::LaunchFailed(_)), "{err:?}");
    assert!(tap_gone(&nic_spec), "a failed launch left tap-f");
    assert!(
        !nic::detach(&nic_spec).unwrap(),
        "a failed launch left eth0's redirect"
    );

    // The kit refuses the NIC before QEMU runs: named, nothing left.
    let mut f = fixture(&pvh_stub());
    let mut wrong = nic_spec.clone();
    wrong.mac = "02:00:00:00:00:99".into();
    f.spec.nics = vec![wrong];
    let err = tcg(Machine::Microvm)
        .launch(f.spec.clone())
        .await
        .err()
        .expect("a NIC with the wrong MAC must be refused");
    let HypervisorError::LaunchFailed(message) = &err else {
        panic!("expected LaunchFailed, got {err:?}")
    };
    assert!(
        message.contains("NIC 0") && message.contains("has MAC"),
        "{message}"
    );
    assert!(tap_gone(&nic_spec));
    assert!(run_files(&f.spec.run_dir).is_empty());

    // A malformed NIC is an invalid spec.
    let mut f = fixture(&pvh_stub());
    let mut bad = nic_spec.clone();
    bad.device = "a-name-too-long-for-linux".into();
    f.spec.nics = vec![bad];
    let err = tcg(Machine::Microvm).launch(f.spec.clone()).await.err();
    assert!(
        matches!(&err, Some(HypervisorError::InvalidSpec(m)) if m.contains("NIC 0")),
        "{err:?}"
    );
}

/// The virtiofsd the kit finds (installed by .ci/deps.sh), or a skip note.
fn have_virtiofsd() -> bool {
    match hyper_hypervisor::virtiofs::find_binary(None) {
        Ok(_) => root(),
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// `f`'s spec with a second read-write disk (a block volume) and two
/// shares, `data` read-write and `conf` read-only.
fn with_shares(f: &Fixture) -> VmSpec {
    let mut spec = f.spec.clone();
    let vol = f.dir.path().join("vol.img");
    std::fs::write(&vol, [0; 65536]).unwrap();
    spec.disks.push(DiskSpec {
        path: vol,
        read_only: false,
        id: "vol-b".into(),
    });
    for (tag, read_only) in [("data", false), ("conf", true)] {
        let source = f.dir.path().join(tag);
        std::fs::create_dir(&source).unwrap();
        spec.shares.push(hyper_hypervisor::ShareSpec {
            tag: tag.into(),
            source,
            read_only,
        });
    }
    spec
}

/// The daemons the kit recorded for `run_dir`: (tag, pid).
fn daemons(run_dir: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read(run_dir.join("virtiofsd.json")).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&text).unwrap();
    records
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().to_string(),
                r["pid"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// Sockets and records of the shares left in `run_dir`.
fn share_files(run_dir: &Path) -> Vec<String> {
    std::fs::read_dir(run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("virtiofsd") || n.ends_with(".sock") || n.ends_with(".pid"))
        .collect()
}

fn assert_no_share_files(run_dir: &Path) {
    let left = share_files(run_dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Real QEMU, real virtiofsd: QEMU connects to both daemons as the
/// vhost-user frontend (its chardevs are open, each daemon logs the
/// client), guest RAM is the shared memfd, both read-write disks are
/// there; then `kill -9` of one daemon takes the VM down, reported as
/// `helper_died`, and nothing of the VM is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_are_served_and_a_dead_virtiofsd_stops_the_vm() {
    if !have_qemu() || !have_virtiofsd() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    assert_eq!(
        hv.capabilities().share_transport,
        Some(hyper_hypervisor::ShareTransport::VirtioFs)
    );
    let spec = with_shares(&f);
    let vm = hv.launch_qemu(spec.clone()).await.expect("launch");
    let qemu = vm.pid();
    // A connected unix client socket has no local name: "unix:".
    let chardevs = vm
        .qmp_command("query-chardev", Duration::from_secs(5))
        .await
        .unwrap();
    for label in ["vfs0", "vfs1"] {
        let dev = chardevs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == label)
            .unwrap_or_else(|| panic!("no chardev {label}: {chardevs}"));
        assert_eq!(dev["filename"], "unix:", "{dev}");
    }
    let blocks = vm
        .qmp_command("query-block", Duration::from_secs(5))
        .await
        .unwrap();
    let writable = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["inserted"]["ro"] == false)
        .count();
    assert_eq!(writable, 2, "{blocks}");
    let memfd = std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .any(|l| l.to_string_lossy().starts_with("/memfd:mem"));
    assert!(memfd, "guest RAM is not a memfd");

    let daemons = daemons(&spec.run_dir);
    assert_eq!(daemons.len(), 2);
    for (tag, pid) in &daemons {
        assert!(alive(*pid));
        let args = cmdline(*pid);
        assert!(
            args.windows(2).any(|w| w == ["--sandbox", "namespace"]),
            "{args:?}"
        );
        assert_eq!(
            args.iter().any(|a| a == "--readonly"),
            tag == "conf",
            "{args:?}"
        );
        let log = std::fs::read_to_string(spec.run_dir.join(format!("vfs-{tag}.log"))).unwrap();
        assert!(log.contains("Client connected"), "{tag}: {log}");
    }

    kill_a_daemon_and_see_the_vm_end(&vm, &spec, qemu, &daemons, 0).await;
}

/// `kill -9` of `daemons[which]`: the VM ends with `helper_died`, and no
/// QEMU, daemon, socket or record of it is left.
async fn kill_a_daemon_and_see_the_vm_end(
    vm: &dyn Vm,
    spec: &VmSpec,
    qemu: u32,
    daemons: &[(String, u32)],
    which: usize,
) {
    // SAFETY: kill(2) of a daemon this test's VM runs.
    unsafe { libc::kill(daemons[which].1 as i32, libc::SIGKILL) };
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(
        exit.helper_died,
        Some(hyper_hypervisor::VmHelper::Virtiofsd),
        "{exit:?}"
    );
    assert!(!alive(qemu));
    for (_, pid) in daemons {
        assert!(!alive(*pid));
    }
    assert!(run_files(&spec.run_dir).is_empty());
    assert_no_share_files(&spec.run_dir);
}

/// q35 (vhost-user-fs-pci): a kill() ends QEMU and its daemon, and no
/// helper is blamed; a takeover adopts the daemons and its kill() also
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_shares_end_with_the_vm_also_after_a_takeover() {
    if !have_qemu() || !have_virtiofsd() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Q35);
    let spec = with_shares(&f);
    let vm = hv.launch(spec.clone()).await.expect("launch");
    let daemons_before = daemons(&spec.run_dir);
    tokio::time::timeout(Duration::from_secs(30), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    let exit = vm.wait().await.unwrap();
    assert_eq!(exit.helper_died, None, "{exit:?}");
    for (_, pid) in &daemons_before {
        assert!(!alive(*pid));
    }
    assert_no_share_files(&spec.run_dir);

    let vm = hv.launch(spec.clone()).await.expect("second launch");
    let info = vm.info();
    let pid = info.pid.unwrap();
    let start = hyper_hypervisor::adopt::process_start_time(pid);
    let daemons = daemons(&spec.run_dir);
    // What a crashed hyperd leaves: the VM and its daemons run on.
    drop(vm);
    let vm = tcg(Machine::Q35)
        .recover(spec.clone(), info, start)
        .await
        .expect("recover");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), vm.wait())
            .await
            .is_err(),
        "the adopted VM and its daemons still run"
    );
    for (_, pid) in &daemons {
        assert!(alive(*pid));
    }
    tokio::time::timeout(Duration::from_secs(30), vm.kill())
        .await
        .expect("bounded")
        .unwrap();
    vm.wait().await.unwrap();
    assert!(!alive(pid));
    for (_, pid) in &daemons {
        assert!(!alive(*pid));
    }
    assert_no_share_files(&spec.run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_virtiofsd_is_refused_with_how_to_install_it() {
    let f = fixture(&pvh_stub());
    let hv = QemuHypervisor::new(QemuConfig {
        accel: AccelSetting::Tcg,
        virtiofsd: Some("/nonexistent/virtiofsd".into()),
        ..QemuConfig::default()
    });
    let err = hv.launch(with_shares(&f)).await.err().expect("refused");
    let message = err.to_string();
    assert!(
        matches!(err, HypervisorError::Unavailable { .. })
            && message.contains("/nonexistent/virtiofsd")
            && message.contains("cargo install virtiofsd"),
        "{message}"
    );
    assert!(!f.spec.run_dir.join("qemu.log").exists());
}

/// The hyperkernel `make kernel` links into build/, if it is there.
fn hyperkernel() -> Option<PathBuf> {
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/hyperkernel");
    if kernel.exists() {
        Some(kernel)
    } else {
        eprintln!(
            "skipped: {} is missing: run `make kernel`",
            kernel.display()
        );
        None
    }
}

/// An initramfs of the host's static busybox and `init`, packed by cpio.
fn busybox_initramfs(dir: &Path, init: &str) -> PathBuf {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), init).unwrap();
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let image = dir.join("initramfs.cpio");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            image.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    image
}

/// The whole path with the real guest kernel: its virtio-fs driver mounts
/// both shares through QEMU's vhost-user-fs devices and the daemons, reads
/// what the host wrote, writes back, and is refused writing to the
/// read-only share (by virtiofsd, whatever the guest mounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_kernel_reads_and_writes_a_share() {
    if !have_qemu() || !have_virtiofsd() {
        return;
    }
    let Some(kernel) = hyperkernel() else {
        return;
    };
    let f = fixture(b"");
    let mut spec = with_shares(&f);
    spec.kernel = kernel;
    spec.memory_mib = 256;
    spec.cmdline = "panic=-1".into();
    spec.initrd = busybox_initramfs(
        f.dir.path(),
        "#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /mnt/data /mnt/conf
$B mount -t virtiofs data /mnt/data && echo MOUNTED-data
$B mount -t virtiofs conf /mnt/conf && echo MOUNTED-conf
echo \"READ-$($B cat /mnt/data/hello)\"
echo from-guest > /mnt/data/out && echo WROTE-data
echo nope > /mnt/conf/x 2>/dev/null || echo REFUSED-conf
echo \"CONF-$($B cat /mnt/conf/setting)\"
$B sync
$B poweroff -f
",
    );
    std::fs::write(spec.shares[0].source.join("hello"), "from-host").unwrap();
    std::fs::write(spec.shares[1].source.join("setting"), "42").unwrap();
    let vm = tcg(Machine::Microvm)
        .launch(spec.clone())
        .await
        .expect("launch");
    // The guest powers off at the end; TCG on a loaded host is slow.
    let exit = tokio::time::timeout(Duration::from_secs(600), vm.wait())
        .await
        .expect("the guest powers off")
        .unwrap();
    let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
    for marker in [
        "MOUNTED-data",
        "MOUNTED-conf",
        "READ-from-host",
        "WROTE-data",
        "REFUSED-conf",
        "CONF-42",
    ] {
        assert!(
            console.contains(marker),
            "no {marker} in the console:\n{console}"
        );
    }
    assert_eq!(exit.helper_died, None, "{exit:?}");
    assert_eq!(
        std::fs::read_to_string(spec.shares[0].source.join("out")).unwrap(),
        "from-guest\n"
    );
    assert!(!spec.shares[1].source.join("x").exists());
    assert_no_share_files(&spec.run_dir);
}

/// As hyperd runs it: the plugin (its own process and runtime) starts the
/// daemons, reports a dead one across the JSON boundary, and leaves
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_through_the_plugin_boundary() {
    if !have_qemu() || !have_virtiofsd() {
        return;
    }
    let dir = testing::cargo_build(&["hyper-backend-qemu"]).unwrap_or_else(|e| panic!("{e}"));
    let plugin = Arc::new(
        LoadedPlugin::load_with_host(
            &dir.join("libhyper_backend_qemu.so"),
            &dir.join(HOST_BINARY),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let hv = plugin
        .configure(serde_json::json!({"accel": "tcg"}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        hv.capabilities().share_transport,
        Some(hyper_hypervisor::ShareTransport::VirtioFs)
    );
    let f = fixture(&pvh_stub());
    let spec = with_shares(&f);
    let vm = hv.launch(spec.clone()).await.expect("launch");
    let qemu = vm.info().pid.unwrap();
    let daemons = daemons(&spec.run_dir);
    assert_eq!(daemons.len(), 2);
    kill_a_daemon_and_see_the_vm_end(vm.as_ref(), &spec, qemu, &daemons, 1).await;
}

/// Measured, not asserted: `launch()` (spawn to a running VM that answers
/// QMP) without shares and with one, alternating, on the halting stub.
/// `cargo test --release -p hyper-backend-qemu --test real_qemu -- --ignored
/// --nocapture launch_time_with_a_share`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn launch_time_with_a_share() {
    if !have_qemu() || !have_virtiofsd() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    let mut shared = f.spec.clone();
    let source = f.dir.path().join("share");
    std::fs::create_dir(&source).unwrap();
    shared.shares.push(hyper_hypervisor::ShareSpec {
        tag: "data".into(),
        source,
        read_only: false,
    });
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..10 {
        for (i, spec) in [&f.spec, &shared].into_iter().enumerate() {
            let started = std::time::Instant::now();
            let vm = hv.launch(spec.clone()).await.expect("launch");
            times[i].push(started.elapsed());
            vm.kill().await.unwrap();
            vm.wait().await.unwrap();
        }
    }
    for (label, t) in ["no share", "one share"].iter().zip(&mut times) {
        t.sort();
        eprintln!(
            "{label}: median {:?}, min {:?}, max {:?}",
            t[t.len() / 2],
            t[0],
            t[t.len() - 1]
        );
    }
}

// ---- templates (issue 16) ----

/// A clone's own spec next to the template's: its own run directory,
/// console log and disk files (the same ids and read-only flags).
fn clone_spec(f: &Fixture, template: &VmSpec, name: &str) -> VmSpec {
    let dir = f.dir.path().join(name);
    std::fs::create_dir_all(dir.join("vm")).unwrap();
    let mut spec = template.clone();
    spec.id = name.into();
    spec.save_as_template = false;
    spec.run_dir = dir.join("vm");
    spec.console_log = dir.join("console.log");
    for disk in &mut spec.disks {
        let path = dir.join(format!("{}.img", disk.id));
        std::fs::write(&path, [0u8; 65536]).unwrap();
        disk.path = path;
    }
    spec
}

/// Whether any process's command line mentions `needle` (a run directory).
fn any_process_mentions(needle: &Path) -> bool {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c.windows(needle.len()).any(|w| w == needle))
}

async fn status(vm: &hyper_backend_qemu::QemuVm) -> String {
    let s = vm
        .qmp_command("query-status", Duration::from_secs(10))
        .await
        .unwrap();
    s["status"].as_str().unwrap_or_default().to_string()
}

/// Launches `spec` as a template VM and saves it into `<dir>/tpl`.
async fn save_template(hv: &QemuHypervisor, f: &Fixture, spec: &VmSpec) -> PathBuf {
    let vm = hv.launch_qemu(spec.clone()).await.expect("template launch");
    let memory = spec.run_dir.join("memory");
    let meta = std::fs::metadata(&memory).unwrap();
    assert_eq!(meta.len(), u64::from(spec.memory_mib) << 20);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(cmdline(vm.pid())
        .iter()
        .any(|a| a.contains("memory-backend-file") && a.ends_with("share=on")));
    let tpl = f.dir.path().join("tpl");
    std::fs::create_dir(&tpl).unwrap();
    vm.save_template(&tpl).await.expect("save_template");
    tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("the template VM ends after its save")
        .unwrap();
    assert!(!memory.exists(), "the RAM file was moved, not left");
    assert!(run_files(&spec.run_dir).is_empty());
    for file in ["memory", "state", "template.json"] {
        assert!(tpl.join(file).is_file(), "no {file} in the template");
    }
    tpl
}

/// Save, then two clones restored from it run at once, each with its own
/// run directory and disks and the template's RAM mapped privately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_saved_and_restored_into_two_clones() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    assert!(hv.capabilities().templates);
    let mut spec = f.spec.clone();
    spec.save_as_template = true;
    let tpl = save_template(&hv, &f, &spec).await;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tpl.join("template.json")).unwrap()).unwrap();
    assert_eq!(meta["format"], 1);
    assert_eq!(meta["layout"]["disks"][1]["id"], "scratch");

    let mut clones = Vec::new();
    for name in ["c1", "c2"] {
        let clone = clone_spec(&f, &spec, name);
        let vm = hv.restore_qemu(clone.clone(), &tpl).await.expect("restore");
        assert_eq!(status(&vm).await, "running");
        let args = cmdline(vm.pid());
        let memory = format!("mem-path={},share=off", tpl.join("memory").display());
        assert!(args.iter().any(|a| a.contains(&memory)), "{args:?}");
        assert!(args
            .iter()
            .any(|a| a.contains(&*clone.disks[0].path.to_string_lossy())));
        clones.push((vm, clone));
    }
    for (vm, clone) in &clones {
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();
        assert!(run_files(&clone.run_dir).is_empty());
        assert!(!clone.run_dir.join("migrate.sock").exists());
    }
    // The clones wrote nothing into the template.
    assert_eq!(
        std::fs::metadata(tpl.join("memory")).unwrap().len(),
        64 << 20
    );
}

/// A template that is not what the clone needs is refused before anything
/// starts: another layout, an altered state, a truncated memory file, a
/// missing metadata file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_is_refused_and_nothing_is_left_running() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let hv = tcg(Machine::Microvm);
    let mut spec = f.spec.clone();
    spec.save_as_template = true;
    let tpl = save_template(&hv, &f, &spec).await;
    let clone = clone_spec(&f, &spec, "c1");

    let refused = |e: HypervisorError, what: &str| {
        let HypervisorError::TemplateRejected(reason) = e else {
            panic!("{what}: expected TemplateRejected, got {e:?}");
        };
        eprintln!("{what}: refused: {reason}");
        assert!(!any_process_mentions(&clone.run_dir), "{what}: a QEMU runs");
        assert!(run_files(&clone.run_dir).is_empty(), "{what}");
        reason
    };

    // Another layout: the data disk read-only, one more NIC-less disk.
    let mut other = clone.clone();
    other.disks[1].read_only = true;
    let e = hv.restore_qemu(other, &tpl).await.err().unwrap();
    assert!(refused(e, "other layout").contains("disks"));
    let mut other = clone.clone();
    other.memory_mib = 128;
    let e = hv.restore_qemu(other, &tpl).await.err().unwrap();
    assert!(refused(e, "other memory").contains("memory_mib"));

    // An altered state file (same size).
    let state = tpl.join("state");
    let good = std::fs::read(&state).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    std::fs::write(&state, &bad).unwrap();
    let e = hv.restore_qemu(clone.clone(), &tpl).await.err().unwrap();
    assert!(refused(e, "altered state").contains("checksum"));
    std::fs::write(&state, &good).unwrap();

    // A truncated memory file.
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(tpl.join("memory"))
        .unwrap();
    memory.set_len(32 << 20).unwrap();
    let e = hv.restore_qemu(clone.clone(), &tpl).await.err().unwrap();
    assert!(refused(e, "truncated memory").contains("truncated"));
    memory.set_len(64 << 20).unwrap();

    // No metadata.
    std::fs::rename(tpl.join("template.json"), tpl.join("x.json")).unwrap();
    let e = hv.restore_qemu(clone.clone(), &tpl).await.err().unwrap();
    refused(e, "no metadata");
    std::fs::rename(tpl.join("x.json"), tpl.join("template.json")).unwrap();

    // Put back, the same template restores.
    let vm = hv.restore_qemu(clone.clone(), &tpl).await.expect("restore");
    assert_eq!(status(&vm).await, "running");
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
}

/// A template VM cannot have shares (vhost-user-fs does not migrate in
/// QEMU 7.2): refused before anything starts, so the core cold-starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_vm_with_shares_is_refused() {
    if !have_qemu() {
        return;
    }
    let f = fixture(&pvh_stub());
    let mut spec = with_shares(&f);
    spec.save_as_template = true;
    let e = tcg(Machine::Microvm)
        .launch(spec.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, HypervisorError::InvalidSpec(m) if m.contains("shares")),
        "{e:?}"
    );
    assert!(!spec.run_dir.join("memory").exists());
    assert!(run_files(&spec.run_dir).is_empty());
}

/// A bare host end of hyperstart's channel: frames in, control messages out.
struct Channel {
    stream: tokio::net::UnixStream,
    decoder: hyper_protocol::FrameDecoder,
}

const GUEST_LIMIT: Duration = Duration::from_secs(300);

impl Channel {
    async fn connect(vm: &dyn Vm) -> Self {
        let AgentChannel::UnixSocket(path) = vm.info().agent_channel;
        Self {
            stream: tokio::net::UnixStream::connect(&path).await.unwrap(),
            decoder: hyper_protocol::FrameDecoder::new(),
        }
    }

    async fn recv(&mut self) -> hyper_protocol::GuestMessage {
        use tokio::io::AsyncReadExt;
        let read = async {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    if frame.kind == hyper_protocol::FrameKind::Control {
                        return serde_json::from_slice(&frame.payload).unwrap();
                    }
                    continue;
                }
                let mut buf = vec![0u8; self.decoder.wanted()];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the channel closed");
                if let Some(frame) = self.decoder.push(&buf[..n]).unwrap() {
                    if frame.kind == hyper_protocol::FrameKind::Control {
                        return serde_json::from_slice(&frame.payload).unwrap();
                    }
                }
            }
        };
        tokio::time::timeout(GUEST_LIMIT, read)
            .await
            .expect("no message from hyperstart")
    }

    async fn send(&mut self, id: u64, request: hyper_protocol::Request) {
        use tokio::io::AsyncWriteExt;
        let msg = hyper_protocol::HostMessage { id, request };
        let frame = hyper_protocol::Frame::control(serde_json::to_vec(&msg).unwrap());
        self.stream.write_all(&frame.encode()).await.unwrap();
    }

    /// Booted guest: READY, then our Hello.
    async fn hello(&mut self) {
        let ready = self.recv().await;
        assert!(
            matches!(ready, hyper_protocol::GuestMessage::Ready { .. }),
            "{ready:?}"
        );
        self.send(
            1,
            hyper_protocol::Request::Hello {
                version: hyper_protocol::PROTOCOL_VERSION,
                capabilities: Vec::new(),
            },
        )
        .await;
        let answer = self.recv().await;
        assert!(
            matches!(
                answer,
                hyper_protocol::GuestMessage::Response {
                    id: 1,
                    result: Ok(_)
                }
            ),
            "{answer:?}"
        );
    }

    /// A new host session on a running guest (a restored clone): pad,
    /// Reattach, the resync marker, the answer.
    async fn reattach(&mut self, nonce: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = vec![hyper_protocol::PAD_BYTE; hyper_protocol::RESYNC_PAD_LEN];
        let msg = hyper_protocol::HostMessage {
            id: 7,
            request: hyper_protocol::Request::Reattach {
                nonce: nonce.into(),
            },
        };
        hyper_protocol::Frame::control(serde_json::to_vec(&msg).unwrap()).encode_into(&mut out);
        self.stream.write_all(&out).await.unwrap();
        let mut marker = hyper_protocol::RESYNC_MAGIC.to_vec();
        marker.extend_from_slice(nonce.as_bytes());
        let mut seen: Vec<u8> = Vec::new();
        let find = async {
            loop {
                if let Some(at) = seen.windows(marker.len()).position(|w| w == marker) {
                    return at;
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the channel closed");
                seen.extend_from_slice(&buf[..n]);
            }
        };
        let at = tokio::time::timeout(GUEST_LIMIT, find)
            .await
            .expect("no resync marker from hyperstart");
        // What follows the marker is the new session's first frames.
        let rest = seen[at + marker.len()..].to_vec();
        self.decoder = hyper_protocol::FrameDecoder::new();
        let first = self.decoder.push(&rest).unwrap();
        let answer = match first {
            Some(f) => serde_json::from_slice(&f.payload).unwrap(),
            None => self.recv().await,
        };
        assert!(
            matches!(
                answer,
                hyper_protocol::GuestMessage::Response {
                    id: 7,
                    result: Ok(hyper_protocol::Reply::Reattached { .. })
                }
            ),
            "{answer:?}"
        );
    }

    async fn ping(&mut self, id: u64) {
        self.send(id, hyper_protocol::Request::Ping).await;
        let answer = self.recv().await;
        assert!(
            matches!(
                answer,
                hyper_protocol::GuestMessage::Response { id: i, result: Ok(hyper_protocol::Reply::Pong) } if i == id
            ),
            "{answer:?}"
        );
    }
}

/// build/hyperstart.img, made by `make payload`.
fn hyperstart_img() -> Option<PathBuf> {
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/hyperstart.img");
    if img.exists() {
        Some(img)
    } else {
        eprintln!("skipped: {} is missing: run `make payload`", img.display());
        None
    }
}

/// A template VM booting the real payload (hyperkernel + hyperstart).
fn payload_spec(f: &Fixture) -> Option<VmSpec> {
    let kernel = hyperkernel()?;
    let initrd = hyperstart_img()?;
    let mut spec = f.spec.clone();
    spec.kernel = kernel;
    spec.initrd = initrd;
    spec.cmdline = "quiet panic=-1 rdinit=/init".into();
    spec.memory_mib = 128;
    Some(spec)
}

/// PSS (KiB) of a process, from smaps_rollup.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The real guest: hyperstart boots to READY in the template VM, the
/// template is saved, and two clones each take a new host session on the
/// channel (Reattach) and answer a Ping. Prints the clones' PSS next to two
/// cold VMs' (measured, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_booted_hyperstart_answer_on_the_channel() {
    if !have_qemu() {
        return;
    }
    let f = fixture(b"");
    let Some(mut spec) = payload_spec(&f) else {
        return;
    };
    let hv = tcg(Machine::Microvm);
    spec.save_as_template = true;
    let started = std::time::Instant::now();
    let vm = hv.launch_qemu(spec.clone()).await.expect("template launch");
    let mut chan = Channel::connect(&vm).await;
    chan.hello().await;
    let cold_ready = started.elapsed();
    let tpl = f.dir.path().join("tpl");
    std::fs::create_dir(&tpl).unwrap();
    vm.save_template(&tpl).await.expect("save_template");
    vm.wait().await.unwrap();
    drop(chan);

    let mut clones: Vec<(Box<dyn Vm>, Channel, VmSpec)> = Vec::new();
    for (i, name) in ["c1", "c2"].iter().enumerate() {
        let clone = clone_spec(&f, &spec, name);
        let started = std::time::Instant::now();
        let vm = hv.restore(clone.clone(), &tpl).await.expect("restore");
        let mut chan = Channel::connect(vm.as_ref()).await;
        chan.reattach(&format!("{:016x}", 0xc10e + i)).await;
        let ready = started.elapsed();
        chan.ping(8).await;
        eprintln!("clone {name}: restore to channel ready {ready:?} (template cold boot to READY {cold_ready:?})");
        clones.push((vm, chan, clone));
    }
    // A hyperd restart: c2 is taken over by a new backend and its guest
    // gets yet another host session.
    let (vm, chan, clone) = clones.pop().unwrap();
    let info = vm.info();
    let start = hyper_hypervisor::adopt::process_start_time(info.pid.unwrap());
    drop((vm, chan));
    let vm = tcg(Machine::Microvm)
        .recover(clone.clone(), info, start)
        .await
        .expect("recover a restored VM");
    let mut chan = Channel::connect(vm.as_ref()).await;
    chan.reattach("00000000000000aa").await;
    clones.push((vm, chan, clone));
    // Both still answer, each on its own channel.
    for (i, (_, chan, _)) in clones.iter_mut().enumerate() {
        chan.ping(20 + i as u64).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let clone_pss: Vec<u64> = clones
        .iter()
        .map(|(vm, _, _)| pss_kib(vm.info().pid.unwrap()))
        .collect();

    let mut colds = Vec::new();
    for name in ["k1", "k2"] {
        let cold = clone_spec(&f, &spec, name);
        let vm = hv.launch_qemu(cold).await.expect("cold launch");
        let mut chan = Channel::connect(&vm).await;
        chan.hello().await;
        colds.push((vm, chan));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cold_pss: Vec<u64> = colds.iter().map(|(vm, _)| pss_kib(vm.pid())).collect();
    eprintln!(
        "PSS of two idle clones: {clone_pss:?} KiB (sum {} MiB); of two idle cold VMs: {cold_pss:?} KiB (sum {} MiB)",
        clone_pss.iter().sum::<u64>() / 1024,
        cold_pss.iter().sum::<u64>() / 1024
    );
    for (vm, _, clone) in &clones {
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();
        assert!(run_files(&clone.run_dir).is_empty());
    }
    for (vm, _) in &colds {
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();
    }
}

/// As hyperd runs it: save and restore through the plugin process, a
/// refusal crossing the boundary typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_through_the_plugin_boundary() {
    if !have_qemu() {
        return;
    }
    let dir = testing::cargo_build(&["hyper-backend-qemu"]).unwrap_or_else(|e| panic!("{e}"));
    let plugin = Arc::new(
        LoadedPlugin::load_with_host(
            &dir.join("libhyper_backend_qemu.so"),
            &dir.join(HOST_BINARY),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let hv = plugin
        .configure(serde_json::json!({"accel": "tcg"}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(hv.capabilities().templates);
    let f = fixture(&pvh_stub());
    let mut spec = f.spec.clone();
    spec.save_as_template = true;
    let vm = hv.launch(spec.clone()).await.expect("launch");
    let tpl = f.dir.path().join("tpl");
    std::fs::create_dir(&tpl).unwrap();
    vm.save_template(&tpl)
        .await
        .expect("save through the plugin");
    tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .expect("ends after the save")
        .unwrap();
    let clone = clone_spec(&f, &spec, "c1");
    let vm = hv.restore(clone.clone(), &tpl).await.expect("restore");
    assert!(alive(vm.info().pid.unwrap()));
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    let mut other = clone_spec(&f, &spec, "c2");
    other.disks.pop();
    let refused = hv.restore(other, &tpl).await.err();
    assert!(
        matches!(&refused, Some(HypervisorError::TemplateRejected(_))),
        "{refused:?}"
    );
    assert!(run_files(&clone.run_dir).is_empty());
}

/// Measured, not asserted (docs/perf/tmplqemu.md): the same payload cold
/// booted to READY, and restored from a template to the guest's answer to
/// Reattach, `HYPER_RUNS` times each (default 5). Run with
/// `cargo test --release -p hyper-backend-qemu --test real_qemu --
/// --ignored template_start_times --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn template_start_times() {
    if !have_qemu() {
        return;
    }
    let runs: usize = std::env::var("HYPER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let f = fixture(b"");
    let Some(spec) = payload_spec(&f) else {
        return;
    };
    let hv = tcg(Machine::Microvm);
    let mut template = spec.clone();
    template.save_as_template = true;
    let vm = hv.launch_qemu(template).await.expect("template launch");
    Channel::connect(&vm).await.hello().await;
    let tpl = f.dir.path().join("tpl");
    std::fs::create_dir(&tpl).unwrap();
    vm.save_template(&tpl).await.expect("save_template");
    vm.wait().await.unwrap();

    let summary = |what: &str, mut times: Vec<Duration>| {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "{what}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} runs: {:?}",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            times.len(),
            times.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
        );
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..runs {
        let s = clone_spec(&f, &spec, &format!("k{i}"));
        let started = std::time::Instant::now();
        let vm = hv.launch(s).await.expect("cold launch");
        Channel::connect(vm.as_ref()).await.hello().await;
        cold.push(started.elapsed());
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();

        let s = clone_spec(&f, &spec, &format!("c{i}"));
        let started = std::time::Instant::now();
        let vm = hv.restore(s, &tpl).await.expect("restore");
        Channel::connect(vm.as_ref())
            .await
            .reattach(&format!("{i:08x}"))
            .await;
        warm.push(started.elapsed());
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();
    }
    summary("cold boot to READY", cold);
    summary("restore to Reattached", warm);
}

/// Measured, not asserted (docs/perf/tmplqemu.md): an idle payload VM's
/// PSS and boot to READY for each TCG translation buffer size, and which
/// part of it is anonymous (the buffer, the guest's touched RAM) or the
/// kernel file. Run with `cargo test --release -p hyper-backend-qemu --test
/// real_qemu -- --ignored idle_memory_by_tb_size --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn idle_memory_by_tb_size() {
    if !have_qemu() {
        return;
    }
    let f = fixture(b"");
    let Some(spec) = payload_spec(&f) else {
        return;
    };
    for tb in [0u32, 32, 16, 8] {
        let hv = QemuHypervisor::new(QemuConfig {
            accel: AccelSetting::Tcg,
            tcg_tb_size_mib: tb,
            ..QemuConfig::default()
        });
        let s = clone_spec(&f, &spec, &format!("tb{tb}"));
        let started = std::time::Instant::now();
        let vm = hv.launch_qemu(s).await.expect("launch");
        let mut chan = Channel::connect(&vm).await;
        chan.hello().await;
        let ready = started.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", vm.pid())).unwrap();
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        eprintln!(
            "tcg_tb_size_mib = {tb}: READY in {ready:?}; Pss {} (Pss_Anon {}, Pss_File {})",
            field("Pss:"),
            field("Pss_Anon:"),
            field("Pss_File:")
        );
        vm.kill().await.unwrap();
        vm.wait().await.unwrap();
    }
}
