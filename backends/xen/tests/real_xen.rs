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
    let err = XenHypervisor::new(config())
        .launch(s)
        .await
        .err()
        .expect("must fail");
    match &err {
        HypervisorError::LaunchFailed(m) => {
            assert!(m.contains("xl create failed") && m.contains("libxl"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    nothing_left("hx-badkernel");
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
    let mut stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
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
