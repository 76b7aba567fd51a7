//! The NIC kit against the real kernel (needs root and /dev/net/tun; the
//! test machine is root). Each test makes its own namespace, named after the
//! test and this process, with a veth pair laid out as CNI's bridge plugin
//! does (one end `eth0` in the pod's namespace, the other in the host's),
//! attaches a tap and proves frames cross the redirect both ways, then that
//! removing the namespace leaves nothing.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use hyper_hypervisor::nic::{self, link, netns, tap, NicError};
use hyper_hypervisor::NicSpec;
use rtnetlink::{LinkUnspec, LinkVeth};

/// How long a frame may take to show up (bounded wait, not a timing
/// assertion: the machine is shared and slow).
const PATIENCE: Duration = Duration::from_secs(20);

/// An ethertype for local experiments (IEEE 802 "local experimental 1"), so
/// the frames we look for are never confused with the kernel's own.
const ETHERTYPE: u16 = 0x88b5;

fn root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new(tap::TUN_DEVICE).exists() {
        eprintln!("skipped: needs root and {}", tap::TUN_DEVICE);
        return false;
    }
    true
}

/// The host's (this process's) namespace, for the kit's `run_in`.
fn host_ns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

/// Runs netlink requests on a thread inside `ns` (test-only setup the kit
/// has no API for: veth pairs).
fn in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce(rtnetlink::Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> T {
    // Built outside the namespace: see the kit's nl::run_in (tokio's
    // signal driver makes a process-wide socket pair on first use).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    netns::run_in(ns, move || {
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .unwrap()
}

struct Pod {
    netns: PathBuf,
    /// The veth end left in the host's namespace.
    host_end: String,
    spec: NicSpec,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = netns::remove(&self.netns);
        let name = self.host_end.clone();
        in_ns(&host_ns(), move |h| {
            Box::pin(async move {
                if let Ok(Some(l)) = h.link().get().match_name(name).execute().try_next().await {
                    let _ = h.link().del(l.header.index).execute().await;
                }
            })
        });
    }
}

/// A namespace with `eth0` in it whose veth peer `host_end` is in the host's
/// namespace, both up; the spec joins `device` to `eth0`.
fn pod(tag: &str, device: &str) -> Pod {
    let pid = std::process::id() % 100_000;
    let name = format!("hyper-kittest-{tag}-{pid}");
    let _ = netns::remove(&netns::path(&name));
    let path = netns::create(&name).unwrap();
    let host_end = format!("hk{tag}{pid}");
    assert!(host_end.len() <= 15, "{host_end}");
    let host_fd = File::open("/proc/thread-self/ns/net").unwrap();
    let mut pod = Pod {
        netns: path.clone(),
        host_end: host_end.clone(),
        spec: NicSpec {
            netns: path.clone(),
            peer: "eth0".into(),
            device: device.into(),
            mac: String::new(),
            mtu: 1500,
        },
    };
    let he = host_end.clone();
    in_ns(&path, move |h| {
        Box::pin(async move {
            h.link()
                .add(LinkVeth::new("eth0", &he).build())
                .execute()
                .await
                .unwrap();
            h.link()
                .set(
                    LinkUnspec::new_with_name(&he)
                        .setns_by_fd(host_fd.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .unwrap();
            h.link()
                .set(LinkUnspec::new_with_name("eth0").up().build())
                .execute()
                .await
                .unwrap();
        })
    });
    let he = host_end.clone();
    in_ns(&host_ns(), move |h| {
        Box::pin(async move {
            h.link()
                .set(LinkUnspec::new_with_name(&he).up().build())
                .execute()
                .await
                .unwrap();
        })
    });
    pod.spec.mac = link::info(&path, "eth0").unwrap().mac.unwrap().to_string();
    pod
}

fn frame(marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6]; // broadcast
    f.extend_from_slice(&[0x02, 0, 0, 0x4b, 0x49, 0x54]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(marker);
    f.resize(64, 0);
    f
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An AF_PACKET socket on interface `index` of the current namespace.
fn packet_socket(index: u32) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: fd is a new descriptor nobody else owns.
    let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    fd
}

fn send_packet(sock: &OwnedFd, index: u32, frame: &[u8]) {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr are valid for the sizes passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
}

/// Reads frames from `fd` until one contains `marker`; false if none did
/// within [`PATIENCE`].
fn wait_for(fd: &OwnedFd, marker: &[u8]) -> bool {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 500) } <= 0 {
            continue;
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 && contains(&buf[..n as usize], marker) {
            return true;
        }
    }
    false
}

fn write_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: frame is valid for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
}

fn link_gone(ns: &Path, name: &str) -> bool {
    matches!(link::info(ns, name), Err(NicError::NoSuchLink { .. }))
}

#[test]
fn a_frame_crosses_the_redirect_both_ways_and_removing_the_netns_leaves_nothing() {
    if !root() {
        return;
    }
    let pod = pod("x", "tap0");
    let tap_fd = nic::attach_tap(&pod.spec, false).unwrap();

    let tap = link::info(&pod.netns, "tap0").unwrap();
    assert!(tap.up, "{tap:?}");
    assert!(tap.carrier, "a tap someone holds has carrier: {tap:?}");
    assert_eq!(tap.mtu, 1500);
    let host_index = link::info(&host_ns(), &pod.host_end).unwrap().index;
    let sock = packet_socket(host_index);

    // Guest -> network: written into the tap, leaves eth0, seen on the
    // host end of the veth.
    let out = format!("kit-out-{}", std::process::id());
    write_frame(&tap_fd, &frame(out.as_bytes()));
    assert!(
        wait_for(&sock, out.as_bytes()),
        "the frame written into the tap never reached the veth's host end"
    );

    // Network -> guest: sent on the host end, arrives on eth0, redirected
    // out of the tap to whoever holds it.
    let into = format!("kit-in-{}", std::process::id());
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(tap_fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    send_packet(&sock, host_index, &frame(into.as_bytes()));
    assert!(
        wait_for(&tap_fd, into.as_bytes()),
        "the frame sent to eth0 never came out of the tap"
    );

    // The tap is not persistent: it goes with its descriptor.
    drop(tap_fd);
    assert!(link_gone(&pod.netns, "tap0"));
    // The peer's redirect is undone by detach, once.
    assert!(nic::detach(&pod.spec).unwrap());
    assert!(!nic::detach(&pod.spec).unwrap());

    // Removing the namespace destroys it: the veth pair dies with it, its
    // host end included (the kernel does it asynchronously).
    let name = pod.netns.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(netns::remove(&pod.netns).unwrap());
    assert!(!netns::remove(&pod.netns).unwrap(), "remove is idempotent");
    assert!(netns::list(&name).unwrap().is_empty());
    assert!(!pod.netns.exists());
    let deadline = Instant::now() + PATIENCE;
    while !link_gone(&host_ns(), &pod.host_end) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        link_gone(&host_ns(), &pod.host_end),
        "the namespace was not destroyed: {} is still there",
        pod.host_end
    );
}

#[test]
fn vnet_hdr_taps_are_offered_to_the_vmm() {
    if !root() {
        return;
    }
    let pod = pod("v", "tap0");
    let fd = nic::attach_tap(&pod.spec, true).unwrap();
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills one ifreq.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) },
        0
    );
    // SAFETY: TUNGETIFF set the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    assert_ne!(flags & libc::IFF_VNET_HDR, 0, "{flags:#x}");
    assert_ne!(flags & libc::IFF_TAP, 0, "{flags:#x}");
    assert_ne!(flags & libc::IFF_NO_PI, 0, "{flags:#x}");
    // CLOEXEC: a VMM gets it only on purpose.
    // SAFETY: fcntl on a descriptor we own.
    let fdflags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(fdflags & libc::FD_CLOEXEC, 0);
}

#[test]
fn failed_attaches_name_the_problem_and_leave_nothing() {
    if !root() {
        return;
    }
    let pod = pod("f", "tap0");

    // Each refusal names the problem and leaves no tap and no redirect.
    let netns_name = pod.netns.display().to_string();
    let refused = |what: &str, mutate: &dyn Fn(&mut NicSpec), wanted: &[&str]| {
        let mut spec = pod.spec.clone();
        mutate(&mut spec);
        let err = nic::attach_tap(&spec, false).unwrap_err().to_string();
        assert!(wanted.iter().all(|w| err.contains(w)), "{what}: {err}");
        assert!(link_gone(&pod.netns, "tap0"), "{what}: a tap was left");
        if spec.netns == pod.netns {
            assert!(
                !nic::detach(&pod.spec).unwrap(),
                "{what}: a redirect was left on eth0"
            );
        }
    };
    refused(
        "the guest MAC must be the peer's",
        &|s| s.mac = "02:00:00:00:00:99".into(),
        &["peer eth0", "has MAC"],
    );
    refused(
        "a missing peer is named, before any tap exists",
        &|s| s.peer = "eth9".into(),
        &["no interface eth9", &netns_name],
    );
    // Never shared: IFF_TUN_EXCL (and lo is left alone).
    refused(
        "a device name already taken",
        &|s| s.device = "lo".into(),
        &["tap lo", "already exists"],
    );
    refused(
        "a missing namespace is named",
        &|s| s.netns = "/run/netns/hyper-kittest-does-not-exist".into(),
        &["hyper-kittest-does-not-exist"],
    );

    // After all that, a good attach still works (nothing stale in the way),
    // and twice in a row (a retried launch) replaces the old redirect.
    let first = nic::attach_tap(&pod.spec, false).unwrap();
    drop(first);
    let _second = nic::attach_tap(&pod.spec, false).unwrap();
    assert!(link::info(&pod.netns, "tap0").unwrap().up);
}

#[test]
fn an_existing_device_is_joined_like_a_xen_vif() {
    if !root() {
        return;
    }
    let mut pod = pod("j", "vif0");
    pod.spec.mtu = 1400;
    link::add_veth(&pod.netns, "vif0", "vif0-dom").unwrap();
    nic::join(&pod.spec).unwrap();
    let vif = link::info(&pod.netns, "vif0").unwrap();
    assert!(vif.up);
    assert_eq!(vif.mtu, 1400);

    // A frame from the host end reaches the "domain" end through the vif.
    let dom_index = link::info(&pod.netns, "vif0-dom").unwrap().index;
    let host_index = link::info(&host_ns(), &pod.host_end).unwrap().index;
    // A socket made on a thread inside the namespace stays bound there.
    let dom = netns::run_in(&pod.netns, move || packet_socket(dom_index)).unwrap();
    let host = packet_socket(host_index);
    let marker = format!("kit-join-{}", std::process::id());
    send_packet(&host, host_index, &frame(marker.as_bytes()));
    let seen = wait_for(&dom, marker.as_bytes());
    assert!(
        seen,
        "the frame sent to eth0 never came out of the joined device"
    );
}

#[test]
fn namespaces_are_created_once_and_listed() {
    if !root() {
        return;
    }
    let name = format!("hyper-kittest-n-{}", std::process::id());
    let path = netns::create(&name).unwrap();
    assert_eq!(netns::list(&name).unwrap(), vec![name.clone()]);
    assert!(matches!(
        netns::create(&name),
        Err(NicError::NetnsExists { .. })
    ));
    // It is a real, empty namespace: only lo.
    let links = link::list(&path).unwrap();
    assert_eq!(
        links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["lo"]
    );
    // add_veth/delete, the test helpers other crates use.
    link::add_veth(&path, "va", "vb").unwrap();
    assert!(link::info(&path, "vb").unwrap().up);
    assert!(link::delete(&path, "va").unwrap());
    assert!(!link::delete(&path, "va").unwrap());
    assert!(link_gone(&path, "vb"), "a veth takes its peer along");
    assert!(netns::remove(&path).unwrap());
    assert!(netns::list(&name).unwrap().is_empty());
}
