//! Against a real Xen dom0: xl, xenstored, xenconsoled. Ignored by default;
//! `tests/xen/run-suite.sh` runs them (`--ignored`) in the dom0 it boots
//! under QEMU, with `HYPER_PAYLOAD_DIR` (hyperkernel, hyperstart.img,
//! poweroff.img) and `HYPER_XEN_XL` set.

use std::path::PathBuf;
use std::time::Duration;

use hyper_backend_xen::config::XenConfig;
use hyper_backend_xen::xenstore::Xenstore;
use hyper_backend_xen::XenHypervisor;
use hyper_hypervisor::{AgentChannel, Hypervisor, HypervisorError, VmSpec};
use tokio::io::AsyncReadExt;

fn config() -> XenConfig {
    XenConfig {
        xl: std::env::var("HYPER_XEN_XL")
            .unwrap_or_else(|_| "/usr/lib/xen-4.17/bin/xl".into())
            .into(),
        ..XenConfig::default()
    }
}

fn payload(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("HYPER_PAYLOAD_DIR").expect("HYPER_PAYLOAD_DIR")).join(name)
}

fn spec(dir: &tempfile::TempDir, id: &str, initrd: &str) -> VmSpec {
    VmSpec {
        id: id.into(),
        kernel: payload("hyperkernel"),
        initrd: payload(initrd),
        cmdline: "quiet panic=-1 rdinit=/init".into(),
        vcpus: 1,
        memory_mib: 128,
        disks: vec![],
        console_log: dir.path().join("console.log"),
        run_dir: dir.path().to_path_buf(),
        nics: Vec::new(),
        shares: Vec::new(),
        cgroup: None,
        save_as_template: false,
    }
}

/// The message of a launch that must fail with `LaunchFailed`.
async fn launch_failure(spec: VmSpec) -> String {
    match XenHypervisor::new(config()).launch(spec).await {
        Err(HypervisorError::LaunchFailed(m)) => m,
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("the launch must fail"),
    }
}

/// Nothing of the domain is left in xenstore: no domain of that name, no
/// owner record.
fn nothing_left(name: &str) {
    let mut xs = Xenstore::connect(&config().xenstore_socket, Duration::from_secs(3)).unwrap();
    for id in xs.directory("/local/domain").unwrap() {
        let n = xs
            .read_opt(&format!("/local/domain/{id}/name"), 256)
            .unwrap();
        assert_ne!(n.as_deref(), Some(name), "domain {id} is still there");
    }
    assert_eq!(
        xs.read_opt(&format!("/tool/hyper/vms/{name}"), 4096)
            .unwrap(),
        None
    );
}

/// The loop devices whose backing file is under `dir` (the backend attaches
/// each disk image to one).
fn loops_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            if std::path::Path::new(backing.trim_end()).starts_with(dir) {
                found.push(name);
            }
        }
    }
    found
}

/// No loop device is left on the files under `dir`: blkback lets go of the
/// device a moment after the domain is gone, then the kernel detaches it.
async fn no_loops_left(dir: &std::path::Path) {
    for _ in 0..100 {
        if loops_under(dir).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("loop devices left: {:?}", loops_under(dir));
}

/// The first frame hyperstart sends on the agent socket is READY.
async fn ready_frame(sock: &std::path::Path) -> tokio::net::UnixStream {
    let mut stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(120), stream.read_exact(&mut head))
        .await
        .expect("no frame from hyperstart within 120 s")
        .unwrap();
    // kind (1) + stream (4) + payload length (4, big endian)
    let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
    assert_eq!(head[0], 0, "first frame is a control frame: {head:?}");
    let mut body = vec![0u8; len.min(4096)];
    stream.read_exact(&mut body).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.to_lowercase().contains("ready"), "{text}");
    stream
}

/// Sends hyperstart a `Hello` (the host's answer to READY) and returns the
/// payload of its first control frame back.
async fn hello_answer(sock: &std::path::Path) -> String {
    use hyper_protocol::{Frame, HostMessage, Request, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let hello = HostMessage {
        id: 1,
        request: Request::Hello {
            version: PROTOCOL_VERSION,
            capabilities: Vec::new(),
        },
    };
    let frame = Frame::control(serde_json::to_vec(&hello).unwrap()).encode();
    stream.write_all(&frame).await.unwrap();
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(120), stream.read_exact(&mut head))
            .await
            .expect("no answer from the restored hyperstart within 120 s")
            .unwrap();
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut body = vec![0u8; len.min(1 << 20)];
        stream.read_exact(&mut body).await.unwrap();
        if head[0] == 0 {
            return String::from_utf8_lossy(&body).into_owned();
        }
    }
}

#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn probe_is_usable_in_dom0() {
    let report = XenHypervisor::new(config()).probe().await;
    assert!(report.usable, "{report:?}");
    assert!(report.details.contains_key("xen_version"), "{report:?}");
}

#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_domain_that_fails_to_build_reports_libxl() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel").unwrap();
    let mut s = spec(&dir, "hx-badkernel", "hyperstart.img");
    s.kernel = bogus;
    let disk = dir.path().join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    s.disks.push(hyper_hypervisor::DiskSpec {
        path: disk,
        read_only: true,
        id: "hyper-rootfs0".into(),
    });
    let m = launch_failure(s).await;
    assert!(m.contains("xl create failed") && m.contains("libxl"), "{m}");
    nothing_left("hx-badkernel");
    // The disk's loop device went with the failed launch.
    no_loops_left(dir.path()).await;
}

/// The real payload: hyperstart says READY on the bridged console; kill()
/// destroys the domain and leaves nothing behind.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn ready_on_the_bridged_console_then_kill() {
    let dir = tempfile::tempdir().unwrap();
    let hv = XenHypervisor::new(config());
    let vm = hv
        .launch(spec(&dir, "hx-ready", "hyperstart.img"))
        .await
        .unwrap();
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    drop(ready_frame(&sock).await);
    let stats = vm.stats().await.unwrap();
    assert_eq!(stats.rss_bytes, 128 * 1024 * 1024);
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    nothing_left("hx-ready");
    assert!(!sock.exists());
}

/// A guest that powers off by itself (it never says READY): wait() ends and
/// nothing is left.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_guest_that_powers_off_is_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let hv = XenHypervisor::new(config());
    let vm = hv
        .launch(spec(&dir, "hx-off", "poweroff.img"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(180), vm.wait())
        .await
        .expect("the domain did not go away")
        .unwrap();
    nothing_left("hx-off");
}

/// `ip ARGS…` in dom0 (iproute2); panics with its stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns (`/run/netns/NAME`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .output();
        ip(&["netns", "add", name]);
        Netns(name.to_string())
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// A counter of `dev` in this netns (`ip netns exec` mounts its /sys).
    fn counter(&self, dev: &str, name: &str) -> u64 {
        let file = format!("/sys/class/net/{dev}/statistics/{name}");
        ip(&["netns", "exec", &self.0, "cat", &file])
            .trim()
            .parse()
            .unwrap()
    }

    fn has(&self, dev: &str) -> bool {
        std::process::Command::new("ip")
            .args(["-n", &self.0, "link", "show", "dev", dev])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// Reads the console bridged to `sock` until `marker` or EOF, bounded.
async fn console_until(sock: &std::path::Path, marker: &str, limit: Duration) -> String {
    let mut stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(marker) && seen.len() < (1 << 20) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// A NIC in a pod netns (a veth `eth0` whose other end, 10.99.0.1, is in a
/// second netns standing for the CNI network): the guest (netprobe.img, a
/// busybox init that pings 10.99.0.1 and prints the result) sees its
/// netfront with the NIC's MAC and gets its pings answered through the
/// vif, moved into the netns, renamed and joined by tc redirect. After
/// kill() the vif is gone from the netns and from dom0.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_nic_in_a_netns_carries_the_guests_frames() {
    let pod = Netns::new("hx-pod");
    let out = Netns::new("hx-out");
    ip(&[
        "link", "add", "eth0", "netns", &pod.0, "mtu", "1400", "type", "veth", "peer", "name",
        "o0", "netns", &out.0, "mtu", "1400",
    ]);
    ip(&["-n", &out.0, "addr", "add", "10.99.0.1/24", "dev", "o0"]);
    ip(&["-n", &out.0, "link", "set", "o0", "up"]);
    ip(&["-n", &pod.0, "link", "set", "eth0", "up"]);
    let mac = ip(&[
        "netns",
        "exec",
        &pod.0,
        "cat",
        "/sys/class/net/eth0/address",
    ])
    .trim()
    .to_string();

    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&dir, "hx-net", "netprobe.img");
    s.nics.push(hyper_hypervisor::NicSpec {
        netns: pod.path(),
        peer: "eth0".into(),
        device: "tap0".into(),
        mac: mac.clone(),
        mtu: 1400,
    });
    let hv = XenHypervisor::new(config());
    let vm = hv.launch(s).await.unwrap();
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    let text = console_until(&sock, "NETPROBE-PING-", Duration::from_secs(180)).await;
    assert!(text.contains(&format!("NETPROBE-MAC={mac}")), "{text}");
    assert!(text.contains("NETPROBE-PING-OK"), "{text}");
    // The vif is the pod netns' tap0, with the NIC's MTU; frames crossed it.
    assert!(pod.has("tap0"));
    let mtu = ip(&["netns", "exec", &pod.0, "cat", "/sys/class/net/tap0/mtu"]);
    assert_eq!(mtu.trim(), "1400");
    assert!(pod.counter("tap0", "rx_packets") >= 3);
    assert!(pod.counter("tap0", "tx_packets") >= 3);
    assert!(out.counter("o0", "rx_packets") >= 3);
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    nothing_left("hx-net");
    assert!(!pod.has("tap0"), "the vif outlived its domain");
    let root = ip(&["-o", "link", "show"]);
    assert!(!root.contains(" vif"), "a vif is left in dom0: {root}");
}

/// A NIC whose netns is not there: launch fails naming it, and the domain
/// (with its vif) is destroyed.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_nic_without_its_netns_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&dir, "hx-nonet", "netprobe.img");
    s.nics.push(hyper_hypervisor::NicSpec {
        netns: "/run/netns/hx-no-such-netns".into(),
        peer: "eth0".into(),
        device: "tap0".into(),
        mac: "02:00:0a:63:00:02".into(),
        mtu: 1500,
    });
    let m = launch_failure(s).await;
    assert!(m.contains("hx-no-such-netns"), "{m}");
    nothing_left("hx-nonet");
    let root = ip(&["-o", "link", "show"]);
    assert!(!root.contains(" vif"), "a vif is left in dom0: {root}");
}

/// The device-model processes in dom0 (libxl's QEMU serves the p9
/// entries): pid and command line.
fn device_models() -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains("qemu-system-i386") && text.contains("-xen-domid") {
                found.push((pid, text));
            }
        }
    }
    found
}

/// Volumes: two 9pfs shares (read-write and read-only) and two read-write
/// disks. The guest (volprobe.img) reads the host's files and writes its
/// own through the read-write share (owner and mode as the guest set them),
/// cannot write the read-only one (its bind mount in dom0 is read-only),
/// does not reach dom0's files through a planted symlink, and finds each
/// disk under its id on the command line (it writes its id into the disk).
/// After kill(): no device model, no bind mount, no mount-point directory.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn shares_and_rw_disks_reach_the_guest_and_leave_nothing() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw");
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("from-host"), "written-by-dom0").unwrap();
    std::fs::write(ro.join("from-host"), "read-only-content").unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "DOM0-SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, rw.join("escape")).unwrap();
    let mut s = spec(&dir, "hx-vol", "volprobe.img");
    for id in ["vol-a", "vol-b"] {
        let img = dir.path().join(format!("{id}.img"));
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        s.disks.push(hyper_hypervisor::DiskSpec {
            path: img,
            read_only: false,
            id: id.into(),
        });
    }
    s.shares = vec![
        hyper_hypervisor::ShareSpec {
            tag: "hx-rw".into(),
            source: rw.clone(),
            read_only: false,
        },
        hyper_hypervisor::ShareSpec {
            tag: "hx-ro".into(),
            source: ro.clone(),
            read_only: true,
        },
    ];
    let hv = XenHypervisor::new(config());
    assert_eq!(
        hv.capabilities().share_transport,
        Some(hyper_hypervisor::ShareTransport::Xen9p)
    );
    let vm = hv.launch(s).await.unwrap();
    // Each disk on a loop device of its own (block-hyper is installed in
    // the suite's dom0).
    assert_eq!(
        loops_under(dir.path()).len(),
        2,
        "{:?}",
        loops_under(dir.path())
    );
    let share_dir = config().share_dir;
    assert_eq!(
        hyper_backend_xen::share::mounts_under(&share_dir),
        vec![share_dir.join("hx-vol").join("hx-ro")]
    );
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    let text = console_until(&sock, "VOLPROBE-DONE", Duration::from_secs(240)).await;
    assert_eq!(device_models().len(), 1, "{:?}", device_models());
    for line in [
        "VOLPROBE-MOUNT-RW-OK",
        "VOLPROBE-MOUNT-RO-OK",
        "VOLPROBE-HOST-FILE=written-by-dom0",
        "VOLPROBE-WROTE",
        "VOLPROBE-CHOWNED",
        "VOLPROBE-RO-FILE=read-only-content",
        "VOLPROBE-RO-CREATE=refused",
        "VOLPROBE-RO-APPEND=refused",
        "VOLPROBE-RO-RM=refused",
        "VOLPROBE-SYMLINK=unreadable",
        "VOLPROBE-DISK-vol-a=xvda",
        "VOLPROBE-DISK-vol-b=xvdb",
        "VOLPROBE-DONE",
    ] {
        assert!(text.contains(line), "no {line} in:\n{text}");
    }
    assert!(!text.contains("DOM0-SECRET"), "{text}");
    let meta = std::fs::metadata(rw.join("from-guest")).unwrap();
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "from-guest\n"
    );
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o640));
    let meta = std::fs::metadata(rw.join("by-1000")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(ro.join("from-host")).unwrap(),
        "read-only-content"
    );
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    for id in ["vol-a", "vol-b"] {
        let data = std::fs::read(dir.path().join(format!("{id}.img"))).unwrap();
        let want = format!("VOLPROBE-{id}");
        assert_eq!(&data[512..512 + want.len()], want.as_bytes(), "disk {id}");
    }
    nothing_left("hx-vol");
    no_loops_left(dir.path()).await;
    assert!(hyper_backend_xen::share::mounts_under(&share_dir).is_empty());
    assert!(!share_dir.join("hx-vol").exists());
    // libxl stops the device model with the domain; give it the moment
    // that takes, bounded.
    for _ in 0..100 {
        if device_models().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(device_models().is_empty(), "{:?}", device_models());
}

/// A read-only share whose source is not a directory: launch fails naming
/// the share, before any domain exists, and leaves no mount.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_share_without_its_source_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&dir, "hx-nosrc", "poweroff.img");
    s.shares.push(hyper_hypervisor::ShareSpec {
        tag: "hx-gone".into(),
        source: dir.path().join("no-such-dir"),
        read_only: true,
    });
    let m = launch_failure(s).await;
    assert!(m.contains("hx-gone") && m.contains("no-such-dir"), "{m}");
    nothing_left("hx-nosrc");
    assert!(hyper_backend_xen::share::mounts_under(&config().share_dir).is_empty());
}

/// The device model serving a domain's shares is killed (SIGKILL) while
/// the guest runs: the backend destroys the domain (its 9p requests would
/// never be answered) and wait() says why; nothing is left.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_dead_device_model_stops_the_domain_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rw");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("from-host"), "x").unwrap();
    let mut s = spec(&dir, "hx-dmkill", "volprobe.img");
    s.shares = vec![
        hyper_hypervisor::ShareSpec {
            tag: "hx-rw".into(),
            source: src,
            read_only: false,
        },
        hyper_hypervisor::ShareSpec {
            tag: "hx-ro".into(),
            source: dir.path().to_path_buf(),
            read_only: true,
        },
    ];
    let vm = XenHypervisor::new(config()).launch(s).await.unwrap();
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    let text = console_until(&sock, "VOLPROBE-DONE", Duration::from_secs(240)).await;
    assert!(text.contains("VOLPROBE-MOUNT-RW-OK"), "{text}");
    let models = device_models();
    assert_eq!(models.len(), 1, "{models:?}");
    let pid = models[0].0;
    // SAFETY: a plain kill(2) of the device model found above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let exit = tokio::time::timeout(Duration::from_secs(120), vm.wait())
        .await
        .expect("the domain outlived its device model")
        .unwrap();
    assert_eq!(
        exit.helper_died,
        Some(hyper_hypervisor::VmHelper::DeviceModel)
    );
    nothing_left("hx-dmkill");
    assert!(hyper_backend_xen::share::mounts_under(&config().share_dir).is_empty());
}

/// Templates: a hyperstart domain launched to be saved (one read-only
/// placeholder disk) is saved at READY with `xl save`; a clone restored
/// from it with its own name and disk runs on its own loop device; a
/// template whose checkpoint was altered, or a clone of another layout, is
/// refused before any domain exists; nothing is left.
#[tokio::test]
#[ignore = "needs a Xen dom0 (tests/xen/run-suite.sh)"]
async fn a_saved_template_restores_a_clone_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        p
    };
    let run = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let mut t = spec(&dir, "hx-tmpl", "hyperstart.img");
    t.run_dir = run("tmpl-run");
    t.disks.push(hyper_hypervisor::DiskSpec {
        path: image("placeholder.img"),
        read_only: true,
        id: "hyper-rootfs0".into(),
    });
    t.save_as_template = true;
    let hv = XenHypervisor::new(config());
    let vm = hv.launch(t.clone()).await.unwrap();
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    drop(ready_frame(&sock).await);
    let saved = dir.path().join("template");
    std::fs::create_dir(&saved).unwrap();
    vm.save_template(&saved).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the saved domain did not go away")
        .unwrap();
    nothing_left("hx-tmpl");
    assert!(saved.join("domain.xlsave").is_file());
    let meta = std::fs::read_to_string(saved.join("template.json")).unwrap();
    assert!(meta.contains("\"format\": 1"), "{meta}");
    assert!(meta.contains("\"checkpoint_sha256\""), "{meta}");

    let mut clone = t.clone();
    clone.id = "hx-clone".into();
    clone.run_dir = run("clone-run");
    clone.disks[0].path = image("clone-rootfs.img");
    clone.save_as_template = false;
    let vm = hv.restore(clone.clone(), &saved).await.unwrap();
    let backing: Vec<String> = loops_under(dir.path())
        .iter()
        .map(|l| std::fs::read_to_string(format!("/sys/block/{l}/loop/backing_file")).unwrap())
        .collect();
    assert_eq!(backing.len(), 1, "{backing:?}");
    assert!(backing[0].contains("clone-rootfs.img"), "{backing:?}");
    let stats = vm.stats().await.unwrap();
    assert_eq!(stats.rss_bytes, 128 * 1024 * 1024);
    // The clone's hyperstart resumed where it was saved (READY sent, waiting
    // for the host's Hello) and answers on the clone's own console bridge.
    let AgentChannel::UnixSocket(sock) = vm.info().agent_channel;
    let answer = hello_answer(&sock).await;
    assert!(answer.contains("\"id\":1"), "{answer}");
    vm.kill().await.unwrap();
    vm.wait().await.unwrap();
    nothing_left("hx-clone");
    no_loops_left(dir.path()).await;

    // Another layout: refused before anything starts.
    let mut other = clone.clone();
    other.id = "hx-clone2".into();
    other.memory_mib = 256;
    match hv.restore(other, &saved).await {
        Err(HypervisorError::TemplateRejected(m)) => assert!(m.contains("memory"), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a clone of another size must be refused"),
    }
    // An altered checkpoint (same size, one byte changed): refused by a
    // hyperd that has not hashed it yet.
    let checkpoint = saved.join("domain.xlsave");
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&checkpoint, &bytes).unwrap();
    drop(bytes);
    let mut again = clone.clone();
    again.id = "hx-clone3".into();
    match XenHypervisor::new(config()).restore(again, &saved).await {
        Err(HypervisorError::TemplateRejected(m)) => assert!(m.contains("altered"), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("an altered checkpoint must be refused"),
    }
    nothing_left("hx-clone2");
    nothing_left("hx-clone3");
    no_loops_left(dir.path()).await;
}
