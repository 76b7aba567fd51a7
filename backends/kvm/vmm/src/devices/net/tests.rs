//! The device against real guest memory and hand-built queues, with a
//! datagram socket pair standing in for the tap.

use std::os::fd::{AsRawFd, OwnedFd};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::super::mmio::tests::bring_up;
use super::super::mmio::MmioTransport;
use super::super::testring::Ring;
use super::*;

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const BUF: u64 = 0x40000;

fn pair() -> (OwnedFd, OwnedFd) {
    super::tap::tests::pair(libc::SOCK_DGRAM)
}

struct Setup {
    t: MmioTransport<Net>,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    /// The host side of the "tap".
    peer: OwnedFd,
}

fn setup() -> Setup {
    let (a, peer) = pair();
    let net = Net::new(Tap::new(a).unwrap(), MAC, Some(1400));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(net, mem.clone(), irq).unwrap();
    let rx = Ring::new(0x10000, 16);
    let tx = Ring::new(0x20000, 16);
    bring_up(&mut t, &[rx.addrs(), tx.addrs()]);
    Setup {
        t,
        mem,
        rx,
        tx,
        peer,
    }
}

fn notify(t: &mut MmioTransport<Net>, q: u32) {
    t.write(0x50, &q.to_le_bytes());
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(len, tag);
    f
}

fn peer_send(peer: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is valid for its length.
    let n = unsafe { libc::send(peer.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n, data.len() as isize);
}

/// One datagram from the peer, or None when there is none.
fn peer_recv(peer: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe {
        libc::recv(
            peer.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// Bytes waiting to be read on the device's end (not consumed).
fn tap_queued(t: &MmioTransport<Net>) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: peeking one byte into a one-byte buffer.
    let n = unsafe {
        libc::recv(
            t.device().tap().as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

fn put_tx(mem: &GuestMemoryMmap, at: u64, f: &[u8]) {
    mem.write_slice(&[0u8; HDR_LEN], GuestAddress(at)).unwrap();
    mem.write_slice(f, GuestAddress(at + HDR_LEN as u64))
        .unwrap();
}

#[test]
fn features_and_config() {
    let s = setup();
    let d = s.t.device();
    let f = d.features();
    assert_ne!(f & VIRTIO_NET_F_MAC, 0);
    assert_ne!(f & VIRTIO_NET_F_MTU, 0);
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_eq!(f & OFFLOADS, 0, "no offloads without IFF_VNET_HDR");
    let c = d.config();
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
    let mut t = s.t;
    let mut b = [0u8; 1];
    t.read(0x100 + 5, &mut b);
    assert_eq!(b[0], MAC[5]);
}

#[test]
fn a_frame_goes_out_through_the_tx_queue() {
    let mut s = setup();
    let f = frame(0xa1, 60);
    put_tx(&s.mem, BUF, &f);
    // Header and frame split over three descriptors.
    s.tx.add_chain(
        &s.mem,
        &[
            (BUF, 12, false),
            (BUF + 12, 20, false),
            (BUF + 32, 40, false),
        ],
    );
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), 1);
    assert_eq!(peer_recv(&s.peer).unwrap(), f);
    assert_eq!(s.t.device().stats().tx_frames, 1);
    assert!(!s.t.is_broken());
}

#[test]
fn a_frame_comes_in_through_the_rx_queue() {
    let mut s = setup();
    s.rx.add_chain(&s.mem, &[(BUF, 12, true), (BUF + 0x100, 1514, true)]);
    notify(&mut s.t, 0);
    assert_eq!(s.rx.used_idx(&s.mem), 0, "no frame yet");
    let f = frame(0xb2, 100);
    peer_send(&s.peer, &f);
    // What the event loop does on POLLIN.
    assert_ne!(s.t.device().poll_events() & libc::POLLIN, 0);
    s.t.process(RXQ);
    assert_eq!(s.rx.used_idx(&s.mem), 1);
    assert_eq!(s.rx.used_len(&s.mem, 0), 112);
    let mut hdr = [0u8; 12];
    s.mem.read_slice(&mut hdr, GuestAddress(BUF)).unwrap();
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "num_buffers = 1");
    let mut got = vec![0u8; 100];
    s.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x100))
        .unwrap();
    assert_eq!(got, f);
}

#[test]
fn with_no_receive_buffers_the_tap_is_not_read() {
    let mut s = setup();
    peer_send(&s.peer, &frame(1, 60));
    s.t.process(RXQ);
    assert!(tap_queued(&s.t), "the frame stays in the tap");
    assert_eq!(
        s.t.device().poll_events() & libc::POLLIN,
        0,
        "and the tap is not polled"
    );
    s.rx.add_chain(&s.mem, &[(BUF, 2048, true)]);
    notify(&mut s.t, 0);
    assert_eq!(s.rx.used_idx(&s.mem), 1);
    assert!(!tap_queued(&s.t));
    assert_eq!(
        s.t.device().poll_events() & libc::POLLIN,
        0,
        "the only buffer is used: starved again"
    );
}

#[test]
fn a_full_tap_pushes_back_without_buffering() {
    let mut s = setup();
    // A unix datagram peer that never reads takes only a few datagrams
    // when the send buffer is small.
    let size: libc::c_int = 4096;
    // SAFETY: SO_SNDBUF reads one c_int.
    let r = unsafe {
        libc::setsockopt(
            s.t.device().tap().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    let f = frame(7, 1000);
    for i in 0..15u64 {
        put_tx(&s.mem, BUF + i * 0x1000, &f);
        s.tx.add_chain(&s.mem, &[(BUF + i * 0x1000, 1012, false)]);
    }
    notify(&mut s.t, 1);
    let sent = s.tx.used_idx(&s.mem);
    assert!(sent < 15, "all {sent} accepted: the peer never filled up");
    assert_ne!(s.t.device().poll_events() & libc::POLLOUT, 0);
    // Notifying again while blocked does nothing.
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), sent);
    // Drain the peer: the rest go out in order.
    let mut got = 0;
    for _ in 0..100 {
        while peer_recv(&s.peer).is_some() {
            got += 1;
        }
        s.t.device_mut().tap_writable();
        s.t.process(TXQ);
        if s.tx.used_idx(&s.mem) == 15 {
            while peer_recv(&s.peer).is_some() {
                got += 1;
            }
            break;
        }
    }
    assert_eq!(got, 15);
    assert_eq!(s.t.device().stats().tx_frames, 15);
    assert_eq!(s.t.device().poll_events() & libc::POLLOUT, 0);
}

#[test]
fn hostile_transmit_chains_are_dropped_not_sent() {
    let mut s = setup();
    let f = frame(3, 60);
    put_tx(&s.mem, BUF, &f);
    // Device-writable descriptor in a TX chain.
    s.tx.add_chain(&s.mem, &[(BUF, 12, false), (BUF + 12, 60, true)]);
    // Shorter than a header plus an Ethernet header.
    s.tx.add_chain(&s.mem, &[(BUF, 20, false)]);
    // Longer than any frame.
    s.tx.add_chain(&s.mem, &[(BUF, 70000, false)]);
    // An offload requested that was never offered.
    s.mem.write_obj(1u8, GuestAddress(BUF + 0x2000)).unwrap();
    s.tx.add_chain(&s.mem, &[(BUF + 0x2000, 72, false)]);
    // Empty-length descriptors only.
    s.tx.add_chain(&s.mem, &[(BUF, 0, false), (BUF, 0, false)]);
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), 5, "every chain is returned");
    assert!(peer_recv(&s.peer).is_none(), "nothing was sent");
    assert_eq!(s.t.device().stats().tx_dropped, 5);
    assert!(!s.t.is_broken());
    // The device still works.
    s.tx.add_chain(&s.mem, &[(BUF, 72, false)]);
    notify(&mut s.t, 1);
    assert_eq!(peer_recv(&s.peer).unwrap(), f);
}

#[test]
fn transmit_buffer_outside_memory_breaks_the_device_only() {
    let mut s = setup();
    s.tx.add_chain(&s.mem, &[(0xfff_0000, 72, false)]);
    notify(&mut s.t, 1);
    assert!(s.t.is_broken());
    assert!(!s.t.driver_ok(), "a broken device's tap is not polled");
    assert!(peer_recv(&s.peer).is_none());
}

#[test]
fn looping_chains_are_bounded() {
    let mut s = setup();
    put_tx(&s.mem, BUF, &frame(4, 60));
    s.tx.add_loop(&s.mem, BUF, 16);
    notify(&mut s.t, 1);
    // 16 x 16 bytes at most: the chain ends at the queue size; whatever
    // went out, the call returned.
    if let Some(f) = peer_recv(&s.peer) {
        assert!(f.len() <= 16 * 16);
    }
    s.rx.add_loop(&s.mem, BUF, 16);
    peer_send(&s.peer, &frame(5, 60));
    notify(&mut s.t, 0);
}

#[test]
fn hostile_receive_chains() {
    let mut s = setup();
    // A readable descriptor in a receive chain: returned empty.
    s.rx.add_chain(&s.mem, &[(BUF, 12, false), (BUF + 12, 2000, true)]);
    // Too small for the header.
    s.rx.add_chain(&s.mem, &[(BUF, 8, true)]);
    notify(&mut s.t, 0);
    assert_eq!(s.rx.used_idx(&s.mem), 2);
    assert_eq!(s.rx.used_len(&s.mem, 0), 0);
    assert_eq!(s.rx.used_len(&s.mem, 1), 0);
    // Too small for the frame: the frame is dropped, the buffer kept for
    // the next (small enough) one.
    s.rx.add_chain(&s.mem, &[(BUF, 100, true)]);
    peer_send(&s.peer, &frame(6, 1000));
    peer_send(&s.peer, &frame(7, 60));
    s.t.process(RXQ);
    assert_eq!(s.rx.used_idx(&s.mem), 3);
    assert_eq!(s.rx.used_len(&s.mem, 2), 72);
    assert_eq!(s.t.device().stats().rx_dropped, 1);
    // Outside guest memory: the device breaks, the VMM does not.
    s.rx.add_chain(&s.mem, &[(0xfff_0000, 2000, true)]);
    notify(&mut s.t, 0);
    assert!(s.t.is_broken());
}

#[test]
fn a_closed_peer_neither_stalls_nor_spins() {
    let mut s = setup();
    s.rx.add_chain(&s.mem, &[(BUF, 2048, true)]);
    drop(s.peer);
    notify(&mut s.t, 0);
    // Nothing to read: poll(2) with what the device asks for stays quiet.
    let mut p = libc::pollfd {
        fd: s.t.device().tap().as_raw_fd(),
        events: s.t.device().poll_events(),
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    assert_eq!(r, 0, "revents {:#x}", p.revents);
    // TX frames are dropped, not stuck.
    put_tx(&s.mem, BUF + 0x1000, &frame(8, 60));
    s.tx.add_chain(&s.mem, &[(BUF + 0x1000, 72, false)]);
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), 1);
    assert_eq!(s.t.device().stats().tx_dropped, 1);
    // What the event loop does on POLLERR/POLLHUP: never polled again.
    s.t.device_mut().tap_broken();
    assert_eq!(s.t.device().poll_events(), 0);
}

#[test]
fn bad_avail_index_is_bounded() {
    let mut s = setup();
    put_tx(&s.mem, BUF, &frame(9, 60));
    s.tx.add_chain(&s.mem, &[(BUF, 72, false)]);
    s.tx.set_avail_idx(&s.mem, 1000);
    notify(&mut s.t, 1);
    let mut n = 0;
    while peer_recv(&s.peer).is_some() {
        n += 1;
    }
    assert!(n <= 16, "{n}");
}

#[test]
fn macs_are_parsed_strictly() {
    assert_eq!(parse_mac("02:42:ac:11:00:02"), Some(MAC));
    assert_eq!(parse_mac("02:42:AC:11:00:02"), Some(MAC));
    for bad in [
        "",
        "02:42:ac:11:00",
        "02:42:ac:11:00:02:03",
        "2:42:ac:11:00:02",
        "02:42:ac:11:00:zz",
        "03:42:ac:11:00:02", // multicast
        "02-42-ac-11-00-02",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

/// An indirect descriptor table at `at` with `bufs`, published as the
/// ring's descriptor `slot`.
fn add_indirect(
    ring: &mut Ring,
    mem: &GuestMemoryMmap,
    slot: u16,
    at: u64,
    bufs: &[(u64, u32, bool)],
) {
    for (k, &(addr, len, write)) in bufs.iter().enumerate() {
        let d = at + 16 * k as u64;
        let mut flags: u16 = if write { 2 } else { 0 };
        if k + 1 < bufs.len() {
            flags |= 1;
        }
        mem.write_obj(addr, GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(k as u16 + 1, GuestAddress(d + 14)).unwrap();
    }
    ring.write_desc(mem, slot, at, 16 * bufs.len() as u32, 4, 0);
    ring.publish(mem, slot);
}

#[test]
fn indirect_chains_work_both_ways() {
    let mut s = setup();
    assert_ne!(s.t.device().features() & VIRTIO_RING_F_INDIRECT_DESC, 0);
    let f = frame(0xc3, 80);
    put_tx(&s.mem, BUF, &f);
    add_indirect(
        &mut s.tx,
        &s.mem,
        0,
        0x60000,
        &[(BUF, 12, false), (BUF + 12, 80, false)],
    );
    notify(&mut s.t, 1);
    assert_eq!(peer_recv(&s.peer).unwrap(), f);
    add_indirect(
        &mut s.rx,
        &s.mem,
        0,
        0x61000,
        &[(BUF + 0x1000, 12, true), (BUF + 0x1100, 1514, true)],
    );
    notify(&mut s.t, 0);
    peer_send(&s.peer, &f);
    s.t.process(RXQ);
    assert_eq!(s.rx.used_len(&s.mem, 0), 92);
    let mut got = vec![0u8; 80];
    s.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x1100))
        .unwrap();
    assert_eq!(got, f);
}

#[test]
fn a_chain_of_more_than_64_descriptors_is_dropped() {
    let mut s = setup();
    put_tx(&s.mem, BUF, &frame(0xd4, 60));
    // 1000 one-byte descriptors in an indirect table: valid, but too many.
    let bufs: Vec<_> = (0..1000u64).map(|k| (BUF + k % 72, 1u32, false)).collect();
    add_indirect(&mut s.tx, &s.mem, 0, 0x60000, &bufs);
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), 1);
    assert!(peer_recv(&s.peer).is_none());
    assert_eq!(s.t.device().stats().tx_dropped, 1);
    assert!(!s.t.is_broken());
    // 64 is still fine (header + frame in 1-byte pieces would be 72).
    let bufs: Vec<_> = (0..64u64).map(|k| (BUF + k, 1u32, false)).collect();
    add_indirect(&mut s.tx, &s.mem, 1, 0x70000, &bufs);
    notify(&mut s.t, 1);
    assert_eq!(s.tx.used_idx(&s.mem), 2);
    assert_eq!(peer_recv(&s.peer).map(|f| f.len()), Some(52));
}

/// Over a real tap with IFF_VNET_HDR (in a namespace of its own): the
/// offloads are offered, a driver taking them gets TUNSETOFFLOAD, the
/// guest's header goes to the kernel as is, and a header the kernel
/// refuses loses that frame only.
#[test]
fn vnet_header_passthrough_on_a_real_tap() {
    let Some(fd) = super::tap::tests::tap_in_new_netns("hvtest1", true) else {
        eprintln!("SKIP: cannot create a tap in a new netns here");
        return;
    };
    let net = Net::new(Tap::new(fd).unwrap(), MAC, None);
    let offered = net.features();
    assert_eq!(offered & OFFLOADS, OFFLOADS, "{offered:#x}");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(net, mem.clone(), irq).unwrap();
    let rx = Ring::new(0x10000, 16);
    let mut tx = Ring::new(0x20000, 16);
    // A driver that asks for a feature not offered (MRG_RXBUF) is refused.
    let w = |t: &mut MmioTransport<Net>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    let status = |t: &mut MmioTransport<Net>| {
        let mut b = [0u8; 4];
        t.read(0x70, &mut b);
        u32::from_le_bytes(b)
    };
    w(&mut t, 0x70, 1 | 2);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, 1);
    w(&mut t, 0x24, 0);
    w(&mut t, 0x20, (VIRTIO_NET_F_MAC | (1 << 15)) as u32);
    w(&mut t, 0x70, 1 | 2 | 8);
    assert_eq!(
        status(&mut t) & 8,
        0,
        "FEATURES_OK with an unoffered feature"
    );
    // The offloads, taken: TUNSETOFFLOAD must succeed.
    w(&mut t, 0x70, 0);
    let take = VIRTIO_NET_F_MAC
        | VIRTIO_NET_F_CSUM
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4
        | VIRTIO_NET_F_GUEST_TSO6
        | VIRTIO_NET_F_GUEST_ECN
        | VIRTIO_NET_F_HOST_TSO4;
    w(&mut t, 0x70, 1 | 2);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, 1 | (VIRTIO_RING_F_INDIRECT_DESC >> 32) as u32);
    w(&mut t, 0x24, 0);
    w(&mut t, 0x20, take as u32);
    w(&mut t, 0x70, 1 | 2 | 8);
    assert_ne!(status(&mut t) & 8, 0, "FEATURES_OK refused");
    assert!(!t.device().offload_warned, "TUNSETOFFLOAD was refused");
    for (i, (desc, avail, used, size)) in [rx.addrs(), tx.addrs()].into_iter().enumerate() {
        w(&mut t, 0x30, i as u32);
        w(&mut t, 0x38, u32::from(size));
        w(&mut t, 0x80, desc as u32);
        w(&mut t, 0x90, avail as u32);
        w(&mut t, 0xa0, used as u32);
        w(&mut t, 0x44, 1);
    }
    w(&mut t, 0x70, 1 | 2 | 8 | 4);
    assert!(t.driver_ok());

    // A UDP/IPv4 frame whose checksum the host is asked to complete:
    // NEEDS_CSUM, csum_start 34 (after Ethernet + IP), csum_offset 6.
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![
        0x45,
        0,
        0,
        28 + 4,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
        10,
        0,
        0,
        2,
        10,
        0,
        0,
        1,
    ];
    let csum = {
        let mut a: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while a > 0xffff {
            a = (a & 0xffff) + (a >> 16);
        }
        !(a as u16)
    };
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a, 0, 12, 0, 0, b'h', b'i', b'!', b'!']);
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    mem.write_slice(&f, GuestAddress(BUF + 12)).unwrap();
    tx.add_chain(&mem, &[(BUF, (HDR_LEN + f.len()) as u32, false)]);
    // The same frame with a GSO type the kernel does not know.
    let mut bad = hdr;
    bad[1] = 0x55;
    mem.write_slice(&bad, GuestAddress(BUF + 0x1000)).unwrap();
    mem.write_slice(&f, GuestAddress(BUF + 0x1000 + 12))
        .unwrap();
    tx.add_chain(&mem, &[(BUF + 0x1000, (HDR_LEN + f.len()) as u32, false)]);
    t.process(TXQ);
    assert_eq!(tx.used_idx(&mem), 2);
    let st = t.device().stats();
    assert_eq!((st.tx_frames, st.tx_dropped), (1, 1), "{st:?}");
    assert!(!t.is_broken());
}
