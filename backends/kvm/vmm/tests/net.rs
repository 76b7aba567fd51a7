//! hyper-vmm's virtio-net on this machine's /dev/kvm with a real tap
//! (IFF_VNET_HDR) in a network namespace of its own: the freestanding test
//! guest sends a frame through the real TX queue, the test sees it on the
//! tap's interface, sends one back, and the guest receives it through RX.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::*;

const MAC: [u8; 6] = [0x02, 0x48, 0x59, 0x50, 0x45, 0x01];
const MAC_STR: &str = "02:48:59:50:45:01";
const TAP: &str = "hvtap0";

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// In a new network namespace (on a thread of its own): a tap with
/// IFF_VNET_HDR, up, and a packet socket on it for EtherType 0x88b5.
fn tap_and_packet_socket() -> Result<(OwnedFd, OwnedFd), String> {
    std::thread::spawn(|| -> Result<(OwnedFd, OwnedFd), String> {
        // SAFETY: unshare only changes this thread's namespaces.
        check(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            "unshare(CLONE_NEWNET)",
        )?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("/dev/net/tun: {e}"))?;
        let mut r = ifreq(TAP);
        // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        r.data[..2].copy_from_slice(&(0x0002i16 | 0x1000 | 0x4000).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        check(
            unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, &mut r) },
            "TUNSETIFF",
        )?;
        // SAFETY: a plain socket call.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(s, "socket")?;
        // SAFETY: `s` was just created and is owned here.
        let ctl = unsafe { OwnedFd::from_raw_fd(s) };
        let mut r = ifreq(TAP);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
        unsafe {
            check(
                libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r),
                "SIOCGIFFLAGS",
            )?;
            let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
            r.data[..2].copy_from_slice(&flags.to_ne_bytes());
            check(
                libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r),
                "SIOCSIFFLAGS",
            )?;
        }
        let pkt = packet_socket(TAP)?;
        Ok((OwnedFd::from(tun), pkt))
    })
    .join()
    .map_err(|_| "netns thread panicked".to_string())?
}

/// /dev/kvm and a tap with its packet socket, or None after saying why not.
fn kvm_and_tap_or_skip(test: &str) -> Option<(OwnedFd, OwnedFd)> {
    kvm_or_skip(test)?;
    match tap_and_packet_socket() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIP {test}: no tap in a new netns here (needs root): {e}");
            None
        }
    }
}

#[test]
fn a_frame_each_way_through_a_real_tap() {
    let Some((tap, pkt)) = kvm_and_tap_or_skip("net") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = vmm_args(dir.path(), "tg.hello", tap.as_raw_fd());
    let mut child = spawn_with_fd(&args, tap.as_raw_fd());
    // The VMM has its own copy now.
    drop(tap);

    // The guest's frame, as the host's stack sees it on the tap.
    let got_tx = guest_frame_seen(&pkt, MAC);
    if got_tx {
        send_frame_to_guest(&pkt, MAC);
    }
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    let (_, err) = output(child);
    assert!(
        got_tx,
        "no frame from the guest on the tap\nconsole:\n{log}\nstderr:\n{err}"
    );
    assert!(st.success(), "exit {st:?}\nconsole:\n{log}\nstderr:\n{err}");
    for check in ["net-mac-feature", "net-features", "net-tx", "net-rx"] {
        assert!(
            log.contains(&format!("tg: ok {check}\n")),
            "check {check} missing:\n{log}"
        );
    }
    assert!(log.contains(&format!("tg: net mac {MAC_STR}")), "{log}");
    assert!(log.contains("tg: done failed=0"), "{log}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "debug_exit", "{status}");
    assert!(
        status["nets"][0]["tx_frames"].as_u64() >= Some(1),
        "{status}"
    );
    assert!(
        status["nets"][0]["rx_frames"].as_u64() >= Some(1),
        "{status}"
    );
}

#[test]
fn a_bad_net_fd_is_a_clear_error() {
    if kvm_or_skip("net_errors").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--kernel".into(),
        guest().elf.to_string_lossy().into_owned(),
        "--status-file".into(),
        dir.path()
            .join("status.json")
            .to_string_lossy()
            .into_owned(),
        "--net".into(),
        format!("fd=77,mac={MAC_STR}"),
    ];
    let mut child = spawn(&args);
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    let st_json = status(&dir.path().join("status.json"));
    let msg = st_json["message"].as_str().unwrap_or_default();
    assert!(msg.contains("net fd 77 is not open"), "{msg}");
    // Not a tap: a regular file is refused by name.
    let f = tempfile::tempfile().unwrap();
    let fd = f.as_raw_fd();
    let mut args = args;
    let last = args.len() - 1;
    args[last] = format!("fd={fd},mac={MAC_STR}");
    let mut child = spawn_with_fd(&args, fd);
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    let st_json = status(&dir.path().join("status.json"));
    let msg = st_json["message"].as_str().unwrap_or_default();
    assert!(msg.contains("neither a tap"), "{msg}");
}

fn vmm_args(dir: &std::path::Path, cmdline: &str, fd: i32) -> Vec<String> {
    vec![
        "--kernel".into(),
        guest().elf.to_string_lossy().into_owned(),
        "--memory-mib".into(),
        "64".into(),
        "--cmdline".into(),
        cmdline.into(),
        "--console-log".into(),
        dir.join("console.log").to_string_lossy().into_owned(),
        "--status-file".into(),
        dir.join("status.json").to_string_lossy().into_owned(),
        "--debug-exit".into(),
        "--net".into(),
        format!("fd={fd},mac={MAC_STR},mtu=1500"),
    ]
}

/// The guest sends 20000 frames and never posts a receive buffer while
/// the host floods the tap: the VMM reads nothing, sends everything, and
/// the guest ends normally.
#[test]
fn a_guest_flooding_tx_with_no_receive_buffers() {
    let Some((tap, pkt)) = kvm_and_tap_or_skip("net_flood") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = vmm_args(dir.path(), "tg.hello tg.netflood=20000", tap.as_raw_fd());
    let mut child = spawn_with_fd(&args, tap.as_raw_fd());
    drop(tap);
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.resize(1514, 0x77);
    for _ in 0..2000 {
        // SAFETY: `f` is valid for its length. Frames beyond the tap's
        // queue are dropped by the kernel.
        unsafe {
            libc::send(
                pkt.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    let st = wait_timeout(&mut child, Duration::from_secs(120));
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    let (_, err) = output(child);
    assert!(st.success(), "exit {st:?}\nconsole:\n{log}\nstderr:\n{err}");
    assert!(log.contains("tg: ok net-flood\n"), "{log}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["nets"][0]["tx_frames"], 20001, "{status}");
    assert_eq!(status["nets"][0]["rx_frames"], 0, "{status}");
}

/// A host end that never reads: the device pushes back on the guest (its
/// TX ring stops moving), buffers nothing, and the VMM's event loop still
/// answers (SIGTERM stops it).
#[test]
fn a_stalled_tap_pushes_back_on_the_guest_not_the_vmm() {
    if kvm_or_skip("net_stall").is_none() {
        return;
    }
    let (tap, host) = dgram_pair();
    let dir = tempfile::tempdir().unwrap();
    let args = vmm_args(dir.path(), "tg.hello tg.netflood=100000", tap.as_raw_fd());
    let mut child = spawn_with_fd(&args, tap.as_raw_fd());
    drop(tap);
    let log_path = dir.path().join("console.log");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("tg: net flooding")
    {
        assert!(
            std::time::Instant::now() < end,
            "the guest never started flooding"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the guest run into the full socket.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(st.success(), "{st:?}\n{log}");
    let status = status(&dir.path().join("status.json"));
    assert_eq!(status["reason"], "signal", "{status}");
    let sent = status["nets"][0]["tx_frames"].as_u64().unwrap();
    // Only what the socket took went out: nothing was buffered for it.
    let mut queued = 0;
    let mut buf = [0u8; 2048];
    // SAFETY: `buf` is valid for its length.
    while unsafe {
        libc::recv(
            host.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    } > 0
    {
        queued += 1;
    }
    assert_eq!(sent, queued, "{status}");
    assert!(sent < 1000, "{status}");
}
