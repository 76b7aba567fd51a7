//! A minimal virtio-mmio (version 2) driver: feature negotiation, split
//! virtqueues in static memory, polling for used buffers.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::io::{print, rdtsc};
use crate::{arg, parse_u64, Checks};

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

pub struct Devices {
    items: [(u64, u32); 32],
    n: usize,
}

impl Devices {
    pub fn iter(&self) -> impl Iterator<Item = &(u64, u32)> {
        self.items[..self.n].iter()
    }
    pub fn len(&self) -> usize {
        self.n
    }
}

/// `virtio_mmio.device=4K@0xADDR:IRQ` entries of the command line.
pub fn find_devices(cmdline: &[u8]) -> Devices {
    let mut d = Devices {
        items: [(0, 0); 32],
        n: 0,
    };
    for w in cmdline.split(|&b| b == b' ') {
        let Some(v) = w.strip_prefix(b"virtio_mmio.device=") else {
            continue;
        };
        let Some(at) = v.iter().position(|&b| b == b'@') else {
            continue;
        };
        let rest = &v[at + 1..];
        let colon = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
        let addr = parse_u64(&rest[..colon]);
        let irq = rest.get(colon + 1..).and_then(parse_u64);
        if let (Some(a), Some(i)) = (addr, irq) {
            if d.n < d.items.len() {
                d.items[d.n] = (a, i as u32);
                d.n += 1;
            }
        }
    }
    d
}

fn r32(addr: u64) -> u32 {
    // SAFETY: device registers in the identity-mapped MMIO gap.
    unsafe { read_volatile(addr as *const u32) }
}

fn w32(addr: u64, v: u32) {
    // SAFETY: as above.
    unsafe { write_volatile(addr as *mut u32, v) }
}

pub fn device_id(base: u64) -> Option<u32> {
    (r32(base) == 0x7472_6976 && r32(base + 4) == 2).then(|| r32(base + 8))
}

fn features(base: u64) -> u64 {
    w32(base + 0x14, 1);
    let hi = r32(base + 0x10);
    w32(base + 0x14, 0);
    let lo = r32(base + 0x10);
    (u64::from(hi) << 32) | u64::from(lo)
}

#[repr(C, align(4096))]
struct QueueMem([u8; 0x3000]);
static mut QMEM: [QueueMem; 7] = [const { QueueMem([0; 0x3000]) }; 7];

#[repr(C, align(4096))]
struct BufMem([u8; 0x4000]);
static mut BUF: BufMem = BufMem([0; 0x4000]);

fn qmem(i: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { (&raw const QMEM[i]) as u64 }
}

fn buf() -> u64 {
    (&raw const BUF) as u64
}

#[repr(C, align(4096))]
struct NetMem([u8; 0xa000]);
/// Network frames: TX at 0, sixteen 2 KiB receive buffers from 0x2000.
static mut NETBUF: NetMem = NetMem([0; 0xa000]);

fn netbuf() -> u64 {
    (&raw const NETBUF) as u64
}

fn wmem<T>(addr: u64, v: T) {
    // SAFETY: addresses inside QMEM/BUF, which only this code touches.
    unsafe { write_volatile(addr as *mut T, v) }
}

fn rmem<T: Copy>(addr: u64) -> T {
    // SAFETY: as above (the device writes the used ring and buffers).
    unsafe { read_volatile(addr as *const T) }
}

struct Vq {
    mmio: u64,
    index: u32,
    mem: u64,
    avail_idx: u16,
    last_used: u16,
}

impl Vq {
    fn desc(&self) -> u64 {
        self.mem
    }
    fn avail(&self) -> u64 {
        self.mem + 0x1000
    }
    fn used(&self) -> u64 {
        self.mem + 0x2000
    }

    fn setup(mmio: u64, index: u32, mem: u64) -> Vq {
        // SAFETY: zeroing this queue's own static ring memory.
        unsafe { core::ptr::write_bytes(mem as *mut u8, 0, 0x3000) };
        w32(mmio + 0x30, index);
        w32(mmio + 0x38, u32::from(QSIZE));
        w32(mmio + 0x80, mem as u32);
        w32(mmio + 0x84, (mem >> 32) as u32);
        w32(mmio + 0x90, (mem + 0x1000) as u32);
        w32(mmio + 0x94, ((mem + 0x1000) >> 32) as u32);
        w32(mmio + 0xa0, (mem + 0x2000) as u32);
        w32(mmio + 0xa4, ((mem + 0x2000) >> 32) as u32);
        w32(mmio + 0x44, 1);
        Vq {
            mmio,
            index,
            mem,
            avail_idx: 0,
            last_used: 0,
        }
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc() + 16 * u64::from(i);
        wmem(d, addr);
        wmem(d + 8, len);
        wmem(d + 12, flags);
        wmem(d + 14, next);
    }

    /// Publishes a chain of (addr, len, device-writable) at descriptor `first`.
    fn add(&mut self, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if write { F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.set_desc(i, addr, len, flags, i + 1);
        }
        wmem(
            self.avail() + 4 + 2 * u64::from(self.avail_idx % QSIZE),
            first,
        );
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        wmem(self.avail() + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    fn notify(&self) {
        w32(self.mmio + 0x50, self.index);
    }

    /// The next used element (id, len), waiting up to `cycles` TSC ticks.
    fn wait_used(&mut self, cycles: u64) -> Option<(u32, u32)> {
        let start = rdtsc();
        loop {
            fence(Ordering::SeqCst);
            let idx: u16 = rmem(self.used() + 2);
            if idx != self.last_used {
                let e = self.used() + 4 + 8 * u64::from(self.last_used % QSIZE);
                self.last_used = self.last_used.wrapping_add(1);
                return Some((rmem(e), rmem(e + 4)));
            }
            if rdtsc().wrapping_sub(start) > cycles {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

/// Negotiates VERSION_1 only; returns whether FEATURES_OK stuck.
fn negotiate(base: u64) -> bool {
    negotiate_low(base, 0)
}

/// VERSION_1 plus the device features `low` (bits 0..32).
fn negotiate_low(base: u64, low: u32) -> bool {
    w32(base + 0x70, 0);
    w32(base + 0x70, ACK);
    w32(base + 0x70, ACK | DRIVER);
    w32(base + 0x24, 1);
    w32(base + 0x20, 1);
    w32(base + 0x24, 0);
    w32(base + 0x20, low);
    w32(base + 0x70, ACK | DRIVER | FEATURES_OK);
    r32(base + 0x70) & FEATURES_OK != 0
}

fn driver_ok(base: u64) {
    w32(base + 0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

const TIMEOUT: u64 = 1 << 34;

pub fn console_checks(base: u64, cmdline: &[u8], c: &mut Checks) {
    c.check(
        "console-features",
        negotiate(base),
        format_args!("FEATURES_OK refused"),
    );
    let rxmem = buf() + 0x1000; // 4 x 512
    let txmem = buf();
    let mut rx = Vq::setup(base, 0, qmem(0));
    let mut tx = Vq::setup(base, 1, qmem(1));
    driver_ok(base);
    for i in 0..4u16 {
        rx.add(i, &[(rxmem + 512 * u64::from(i), 512, true)]);
    }
    rx.notify();

    let send = |tx: &mut Vq, bytes: &[u8]| -> bool {
        for chunk in bytes.chunks(512) {
            for (k, b) in chunk.iter().enumerate() {
                wmem(txmem + k as u64, *b);
            }
            tx.add(0, &[(txmem, chunk.len() as u32, false)]);
            tx.notify();
            if tx.wait_used(TIMEOUT).is_none() {
                return false;
            }
        }
        true
    };
    let ok = send(&mut tx, b"tg:console-ready\n");
    c.check("console-tx", ok, format_args!("transmit buffer never used"));
    if arg(cmdline, "tg.echo").is_none() {
        return;
    }
    // Read one line (it may span several receive buffers), echo it back.
    let mut line = [0u8; 4096];
    let mut n = 0;
    let mut done = false;
    let mut timed_out = false;
    while !done && n < line.len() {
        let Some((id, len)) = rx.wait_used(TIMEOUT * 2) else {
            timed_out = true;
            break;
        };
        let id = (id as u16) % 4;
        let at = rxmem + 512 * u64::from(id);
        for k in 0..(len.min(512) as u64) {
            let b: u8 = rmem(at + k);
            if b == b'\n' {
                done = true;
                break;
            }
            if n < line.len() {
                line[n] = b;
                n += 1;
            }
        }
        rx.add(id, &[(at, 512, true)]);
        rx.notify();
    }
    c.check(
        "console-rx",
        done,
        format_args!("no full line (timed out: {timed_out}, {n} bytes)"),
    );
    if done {
        let ok = send(&mut tx, b"echo:") && send(&mut tx, &line[..n]) && send(&mut tx, b"\n");
        c.check("console-echo", ok, format_args!("echo not sent"));
    }
}

fn blk_request(q: &mut Vq, rtype: u32, sector: u64, data_len: u32, write: bool) -> Option<u8> {
    let hdr = buf() + 0x3000;
    let status = buf() + 0x3100;
    let data = buf();
    wmem(hdr, rtype);
    wmem(hdr + 4, 0u32);
    wmem(hdr + 8, sector);
    wmem(status, 0xffu8);
    if data_len == 0 {
        q.add(0, &[(hdr, 16, false), (status, 1, true)]);
    } else {
        q.add(
            0,
            &[
                (hdr, 16, false),
                (data, data_len, !write),
                (status, 1, true),
            ],
        );
    }
    q.notify();
    q.wait_used(TIMEOUT)?;
    Some(rmem(status))
}

pub fn block_checks(base: u64, cmdline: &[u8], c: &mut Checks) {
    let feats = features(base);
    let capacity: u64 = r32(base + 0x100) as u64 | (u64::from(r32(base + 0x104)) << 32);
    print(format_args!(
        "tg: disk at {base:#x}: features {feats:#x}, {capacity} sectors\n"
    ));
    c.check(
        "disk-read-only",
        feats & (1 << 5) != 0,
        format_args!("VIRTIO_BLK_F_RO not offered"),
    );
    c.check(
        "disk-features",
        negotiate(base),
        format_args!("FEATURES_OK refused"),
    );
    let mut q = Vq::setup(base, 0, qmem(2));
    driver_ok(base);
    let data = buf();

    if let Some(want) = arg(cmdline, "tg.disk_serial") {
        let st = blk_request(&mut q, 8, 0, 20, false);
        let mut id = [0u8; 20];
        for (k, b) in id.iter_mut().enumerate() {
            *b = rmem(data + k as u64);
        }
        let len = id.iter().position(|&b| b == 0).unwrap_or(20);
        c.check(
            "disk-serial",
            st == Some(0) && &id[..len] == want,
            format_args!("status {st:?}, id {:?}", core::str::from_utf8(&id[..len])),
        );
    }
    if let Some(sector) = arg(cmdline, "tg.sector").and_then(parse_u64) {
        let st = blk_request(&mut q, 0, sector, 512, false);
        let mut head = [0u8; 32];
        for (k, b) in head.iter_mut().enumerate() {
            *b = rmem(data + k as u64);
        }
        let mut want = [0u8; 32];
        let mut w = Cursor {
            buf: &mut want,
            n: 0,
        };
        let _ = core::fmt::write(&mut w, format_args!("HYPERTG-SECTOR-{sector}\n"));
        let wn = w.n;
        c.check(
            "disk-read",
            st == Some(0) && head[..wn] == want[..wn],
            format_args!(
                "status {st:?}, data {:?}",
                core::str::from_utf8(&head[..wn])
            ),
        );
    }
    let st = blk_request(&mut q, 1, 0, 512, true);
    c.check(
        "disk-write-refused",
        st == Some(1),
        format_args!("write status {st:?}"),
    );
    let st = blk_request(&mut q, 0, capacity, 512, false);
    c.check(
        "disk-read-past-end",
        st == Some(1),
        format_args!("status {st:?}"),
    );
}

const NET_F_MAC: u64 = 1 << 5;
const NET_HDR: u64 = 12;
const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];

/// virtio-net: sends one frame (broadcast, EtherType 0x88b5, payload
/// `HYPERTG-NET-TX`) through the TX queue with the device's MAC as source,
/// then waits on the RX queue for a frame with payload `HYPERTG-NET-RX`
/// (other frames the host's stack sends are skipped).
pub fn net_checks(base: u64, cmdline: &[u8], c: &mut Checks) {
    let feats = features(base);
    c.check(
        "net-mac-feature",
        feats & NET_F_MAC != 0,
        format_args!("features {feats:#x}"),
    );
    c.check(
        "net-features",
        negotiate_low(base, NET_F_MAC as u32),
        format_args!("FEATURES_OK refused"),
    );
    let mut mac = [0u8; 6];
    for (k, b) in mac.iter_mut().enumerate() {
        // SAFETY: the device's config space, in the identity-mapped MMIO gap.
        *b = unsafe { read_volatile((base + 0x100 + k as u64) as *const u8) };
    }
    print(format_args!(
        "tg: net mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\n",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    ));
    let mut rx = Vq::setup(base, 0, qmem(3));
    let mut tx = Vq::setup(base, 1, qmem(4));
    driver_ok(base);

    // TX: header and frame in two descriptors.
    let t = netbuf();
    for k in 0..NET_HDR {
        wmem(t + k, 0u8);
    }
    let f = t + NET_HDR;
    for k in 0..6 {
        wmem(f + k, 0xffu8);
        wmem(f + 6 + k, mac[k as usize]);
    }
    wmem(f + 12, ETHERTYPE_TEST[0]);
    wmem(f + 13, ETHERTYPE_TEST[1]);
    let payload = b"HYPERTG-NET-TX";
    for k in 0..46u64 {
        wmem(f + 14 + k, payload.get(k as usize).copied().unwrap_or(0));
    }
    tx.add(0, &[(t, NET_HDR as u32, false), (f, 60, false)]);
    tx.notify();
    let sent = tx.wait_used(TIMEOUT);
    c.check(
        "net-tx",
        sent.is_some(),
        format_args!("transmit chain never used"),
    );
    if let Some(n) = arg(cmdline, "tg.netflood").and_then(parse_u64) {
        // TX as fast as the device takes it, with no receive buffer ever.
        let len = arg(cmdline, "tg.netflood_len")
            .and_then(parse_u64)
            .unwrap_or(60)
            .clamp(60, 1514) as u32;
        print(format_args!("tg: net flooding {n}\n"));
        let (mut posted, mut done, mut inflight, mut slot) = (0u64, 0u64, 0u16, 1u16);
        while done < n {
            while inflight < QSIZE && posted < n {
                tx.add(slot, &[(t, NET_HDR as u32 + len, false)]);
                slot = (slot + 1) % QSIZE;
                inflight += 1;
                posted += 1;
            }
            tx.notify();
            if tx.wait_used(TIMEOUT).is_none() {
                break;
            }
            inflight -= 1;
            done += 1;
        }
        c.check(
            "net-flood",
            done == n,
            format_args!("{done} of {n} frames sent"),
        );
        return;
    }

    // RX: sixteen buffers, each one descriptor (header + frame).
    let rxb = |i: u16| netbuf() + 0x2000 + 0x800 * u64::from(i);
    for i in 0..QSIZE {
        rx.add(i, &[(rxb(i), 0x800, true)]);
    }
    rx.notify();
    if let Some(n) = arg(cmdline, "tg.netsink").and_then(parse_u64) {
        // Take N frames, whatever they are, as fast as they come.
        print(format_args!("tg: net sinking {n}\n"));
        let mut got = 0;
        while got < n {
            let Some((id, _)) = rx.wait_used(TIMEOUT * 2) else {
                break;
            };
            got += 1;
            let id = (id as u16) % QSIZE;
            rx.add(id, &[(rxb(id), 0x800, true)]);
            rx.notify();
        }
        c.check(
            "net-sink",
            got == n,
            format_args!("{got} of {n} frames received"),
        );
        return;
    }
    let want = b"HYPERTG-NET-RX";
    let mut found = false;
    let mut frames = 0;
    let mut hdr_ok = true;
    while !found && frames < 256 {
        let Some((id, len)) = rx.wait_used(TIMEOUT * 2) else {
            break;
        };
        frames += 1;
        let id = (id as u16) % QSIZE;
        let at = rxb(id);
        let num_buffers: u16 = rmem(at + 10);
        let et: [u8; 2] = [rmem(at + NET_HDR + 12), rmem(at + NET_HDR + 13)];
        if et == ETHERTYPE_TEST && len as u64 >= NET_HDR + 14 + want.len() as u64 {
            hdr_ok = num_buffers == 1;
            found = (0..want.len()).all(|k| rmem::<u8>(at + NET_HDR + 14 + k as u64) == want[k])
                && (0..6).all(|k| rmem::<u8>(at + NET_HDR + k as u64) == mac[k as usize]);
        }
        rx.add(id, &[(at, 0x800, true)]);
        rx.notify();
    }
    c.check(
        "net-rx",
        found && hdr_ok,
        format_args!("{frames} frames, none for us (header ok: {hdr_ok})"),
    );
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_INIT: u32 = 26;

/// One FUSE request on the request queue: in-header + `body` out,
/// out-header + `reply` bytes back. Returns (error, reply length) or None
/// when the device never used the chain.
fn fuse(
    q: &mut Vq,
    unique: u64,
    opcode: u32,
    nodeid: u64,
    body: &[u8],
    reply: u32,
) -> Option<(i32, u32)> {
    let req = buf();
    let out = buf() + 0x2000;
    wmem(req, 40 + body.len() as u32);
    wmem(req + 4, opcode);
    wmem(req + 8, unique);
    wmem(req + 16, nodeid);
    for k in 0..16u64 {
        wmem(req + 24 + k, 0u8);
    }
    for (k, &b) in body.iter().enumerate() {
        wmem(req + 40 + k as u64, b);
    }
    for k in 0..16u64 {
        wmem(out + k, 0xeeu8);
    }
    q.add(
        0,
        &[
            (req, 40 + body.len() as u32, false),
            (out, 16 + reply, true),
        ],
    );
    q.notify();
    let (_, len) = q.wait_used(TIMEOUT)?;
    let got_unique: u64 = rmem(out + 8);
    if got_unique != unique {
        return Some((i32::MIN, len));
    }
    Some((rmem(out + 4), len))
}

fn le(v: &[u32]) -> [u8; 64] {
    let mut b = [0u8; 64];
    for (i, x) in v.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// virtio-fs (a vhost-user device: virtiofsd serves the queues): checks
/// the tag in config space (`tg.fs_tag`), then through the request queue
/// FUSE_INIT, LOOKUP of `hello` in the root, OPEN read-write, READ (the
/// file starts with `HYPERTG-FS-HOST`) and WRITE of `HYPERTG-FS-GUEST` at
/// offset 0 (`tg.fs_ro`: the OPEN must fail with EROFS instead).
pub fn fs_checks(base: u64, cmdline: &[u8], c: &mut Checks) {
    let mut tag = [0u8; 36];
    for (k, b) in tag.iter_mut().enumerate() {
        // SAFETY: the device's config space, in the identity-mapped MMIO gap.
        *b = unsafe { read_volatile((base + 0x100 + k as u64) as *const u8) };
    }
    let queues = r32(base + 0x124);
    let tlen = tag.iter().position(|&b| b == 0).unwrap_or(36);
    if let Some(want) = arg(cmdline, "tg.fs_tag") {
        c.check(
            "fs-tag",
            &tag[..tlen] == want && queues == 1,
            format_args!(
                "tag {:?}, {queues} request queues",
                core::str::from_utf8(&tag[..tlen])
            ),
        );
    }
    c.check(
        "fs-features",
        negotiate(base),
        format_args!("FEATURES_OK refused"),
    );
    let _hiprio = Vq::setup(base, 0, qmem(5));
    let mut q = Vq::setup(base, 1, qmem(6));
    driver_ok(base);
    c.check(
        "fs-driver-ok",
        r32(base + 0x70) & 0x40 == 0,
        format_args!(
            "device needs reset after DRIVER_OK (status {:#x})",
            r32(base + 0x70)
        ),
    );
    let out = buf() + 0x2000 + 16;
    let init = le(&[7, 31, 0x20000, 0]);
    let r = fuse(&mut q, 1, FUSE_INIT, 0, &init[..16], 64);
    let major: u32 = rmem(out);
    c.check(
        "fs-init",
        r.is_some_and(|(e, _)| e == 0) && major == 7,
        format_args!("{r:?}, major {major}"),
    );
    let r = fuse(&mut q, 2, FUSE_LOOKUP, 1, b"hello\0", 128);
    let node: u64 = rmem(out);
    c.check(
        "fs-lookup",
        r.is_some_and(|(e, _)| e == 0) && node != 0,
        format_args!("{r:?}"),
    );
    let ro = arg(cmdline, "tg.fs_ro").is_some();
    let open = le(&[2, 0]); // O_RDWR
    let r = fuse(&mut q, 3, FUSE_OPEN, node, &open[..8], 16);
    if ro {
        c.check(
            "fs-ro-refused",
            r.is_some_and(|(e, _)| e == -30),
            format_args!("{r:?}"),
        );
        return;
    }
    let fh: u64 = rmem(out);
    c.check(
        "fs-open",
        r.is_some_and(|(e, _)| e == 0),
        format_args!("{r:?}"),
    );
    let mut read = [0u8; 40];
    read[..8].copy_from_slice(&fh.to_le_bytes());
    read[16..20].copy_from_slice(&64u32.to_le_bytes());
    let r = fuse(&mut q, 4, FUSE_READ, node, &read, 64);
    let want = b"HYPERTG-FS-HOST";
    let same = (0..want.len()).all(|k| rmem::<u8>(out + k as u64) == want[k]);
    c.check(
        "fs-read",
        r.is_some_and(|(e, _)| e == 0) && same,
        format_args!("{r:?}"),
    );
    let data = b"HYPERTG-FS-GUEST";
    let mut write = [0u8; 40 + 16];
    write[..8].copy_from_slice(&fh.to_le_bytes());
    write[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    write[40..].copy_from_slice(data);
    let r = fuse(&mut q, 5, FUSE_WRITE, node, &write, 8);
    let n: u32 = rmem(out);
    c.check(
        "fs-write",
        r.is_some_and(|(e, _)| e == 0) && n == 16,
        format_args!("{r:?}, {n} bytes"),
    );
    if let Some(n) = arg(cmdline, "tg.fs_bench").and_then(parse_u64) {
        fs_bench(&mut q, n, c);
    }
}

#[repr(C, align(4096))]
struct FsData([u8; FS_BENCH_READ as usize]);
static mut FSDATA: FsData = FsData([0; FS_BENCH_READ as usize]);
const FS_BENCH_READ: u32 = 0x10000;

/// `tg.fs_bench=N`: N LOOKUPs of `hello`, then N READs of 64 KiB of `big`
/// (1 MiB, offsets cycling through it), one request at a time, polled;
/// prints the TSC cycles of each run (`tg: fs-bench …`), the same clock
/// for whichever VMM runs the guest.
fn fs_bench(q: &mut Vq, n: u64, c: &mut Checks) {
    let out = buf() + 0x2000 + 16;
    let t0 = rdtsc();
    let mut ok = 0u64;
    for i in 0..n {
        if fuse(q, 100 + i, FUSE_LOOKUP, 1, b"hello\0", 128).is_some_and(|(e, _)| e == 0) {
            ok += 1;
        }
    }
    let lookups = rdtsc().wrapping_sub(t0);
    let r = fuse(q, 99, FUSE_LOOKUP, 1, b"big\0", 128);
    let node: u64 = rmem(out);
    let open = le(&[0, 0]); // O_RDONLY
    let o = fuse(q, 98, FUSE_OPEN, node, &open[..8], 16);
    let fh: u64 = rmem(out);
    c.check(
        "fs-bench-open",
        r.is_some_and(|(e, _)| e == 0) && o.is_some_and(|(e, _)| e == 0),
        format_args!("{r:?} {o:?}"),
    );
    let data = (&raw const FSDATA) as u64;
    let hdr = buf() + 0x2000;
    let req = buf();
    let t1 = rdtsc();
    let mut bytes = 0u64;
    for i in 0..n {
        wmem(req, 80u32);
        wmem(req + 4, FUSE_READ);
        wmem(req + 8, 1_000_000 + i);
        wmem(req + 16, node);
        for k in 0..16u64 {
            wmem(req + 24 + k, 0u8);
        }
        wmem(req + 40, fh);
        wmem(req + 48, (i % 16) * u64::from(FS_BENCH_READ));
        wmem(req + 56, FS_BENCH_READ);
        for k in 0..20u64 {
            wmem(req + 60 + k, 0u8);
        }
        q.add(
            0,
            &[
                (req, 80, false),
                (hdr, 16, true),
                (data, FS_BENCH_READ, true),
            ],
        );
        q.notify();
        let Some((_, len)) = q.wait_used(TIMEOUT) else {
            break;
        };
        let err: i32 = rmem(hdr + 4);
        if err == 0 {
            bytes += u64::from(len.saturating_sub(16));
        }
    }
    let reads = rdtsc().wrapping_sub(t1);
    print(format_args!(
        "tg: fs-bench lookups={n} ok={ok} cycles={lookups} reads={n}x{FS_BENCH_READ} bytes={bytes} cycles={reads}\n"
    ));
    c.check(
        "fs-bench",
        ok == n && bytes == n * u64::from(FS_BENCH_READ),
        format_args!("{ok} lookups ok, {bytes} bytes read"),
    );
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    n: usize,
}

impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if self.n < self.buf.len() {
                self.buf[self.n] = b;
                self.n += 1;
            }
        }
        Ok(())
    }
}

/// Queue set-ups and descriptor tables full of nonsense, then notifies.
pub fn garbage_queues(base: u64, next: &mut impl FnMut() -> u64) {
    for round in 0..8u32 {
        negotiate(base);
        let mem = qmem(0);
        let mut q = Vq::setup(base, 0, mem);
        if round == 1 {
            // Rings outside guest RAM.
            w32(base + 0x84, 0xffff);
        }
        driver_ok(base);
        for i in 0..QSIZE {
            let v = next();
            let addr = match round % 4 {
                0 => v,                         // anywhere
                1 => mem + (v & 0xfff),         // over the rings themselves
                2 => 0xd000_0000 + (v & 0xfff), // device MMIO
                _ => v & 0xfff_ffff,            // somewhere in RAM
            };
            let next_i = if round == 3 { i } else { (v >> 48) as u16 };
            q.set_desc(i, addr, (v >> 16) as u32, (v >> 40) as u16 & 0x7, next_i);
        }
        q.add(0, &[]);
        wmem(q.avail() + 2, (next() as u16) | 1);
        for qi in [0u32, 1, 2, 0xffff_ffff, next() as u32] {
            w32(base + 0x50, qi);
        }
        let _ = r32(base + 0x60);
        w32(base + 0x64, 0xffff_ffff);
    }
    w32(base + 0x70, 0);
}
