//! virtio-net over a tap fd, in user space (there is no vhost-net here).
//!
//! One RX and one TX queue, no control queue, no mergeable receive
//! buffers. Every frame crosses a bounded bounce buffer: a TX chain is read
//! whole and written to the tap in one `write`; an RX chain is taken from
//! the ring before the tap is read, so with no receive buffers the tap is
//! not read at all (frames wait in the tap's own queue, which the kernel
//! bounds), and when the tap is full the TX chain goes back to the ring
//! until the event loop sees the tap writable again. Nothing is buffered
//! beyond one frame in each direction.
//!
//! With a tap opened with IFF_VNET_HDR the guest's 12-byte
//! `virtio_net_hdr_v1` is passed through both ways and checksum and TSO
//! offloads are offered (the kernel validates the header, as it does for
//! QEMU and vhost-net); without it the header is stripped on TX and a
//! zeroed one is prepended on RX, and no offload is offered.

mod rx;
pub mod tap;
mod tx;

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::mmio::{VirtioDevice, VIRTIO_F_VERSION_1};
pub use tap::{Tap, TapError};

pub const VIRTIO_ID_NET: u32 = 1;
pub const QUEUE_SIZE: u16 = 256;
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;

/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// The largest frame either way: a 64 KiB TSO frame with its Ethernet and
/// VLAN headers (QEMU's limit is the same).
pub const MAX_FRAME: usize = 65550;
const ETH_HLEN: usize = 14;
/// Chains taken per queue per call, so one queue cannot hold the device
/// (and the event loop) forever.
pub const BUDGET: usize = 256;

pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// Descriptors may point at a table of descriptors (followed by
/// `virtio-queue`, bounded by [`MAX_DESCRIPTORS`] here).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

const OFFLOADS: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN;

pub use hyper_vmm_config::{parse_mac, MIN_MTU};

/// Frames and drops, for the exit status and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames read from the tap that did not fit the guest's buffer.
    pub rx_dropped: u64,
    /// Malformed chains, and frames the tap refused.
    pub tx_dropped: u64,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    mtu: Option<u16>,
    acked: u64,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// The buffers of the chain being served (at most [`MAX_DESCRIPTORS`]).
    segs: Vec<(GuestAddress, usize)>,
    /// The last RX attempt found no receive buffer: the tap is not read
    /// (nor polled) until the guest adds some and notifies.
    rx_starved: bool,
    /// The tap refused a frame with EAGAIN: TX waits for POLLOUT.
    tx_blocked: bool,
    /// TX stopped at [`BUDGET`] with chains possibly left.
    tx_more: bool,
    /// The tap reported an error or hang-up: it is not polled again, and
    /// frames the guest sends are dropped.
    tap_failed: bool,
    offload_warned: bool,
    stats: NetStats,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> Self {
        Self {
            tap,
            mac,
            mtu,
            acked: 0,
            rx_buf: vec![0; HDR_LEN + MAX_FRAME],
            tx_buf: vec![0; HDR_LEN + MAX_FRAME],
            segs: Vec::with_capacity(MAX_DESCRIPTORS),
            rx_starved: false,
            tx_blocked: false,
            tx_more: false,
            tap_failed: false,
            offload_warned: false,
            stats: NetStats::default(),
        }
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// What the event loop polls the tap for (0: do not poll it). The
    /// caller checks that the driver is up.
    pub fn poll_events(&self) -> i16 {
        if self.tap_failed {
            return 0;
        }
        let mut ev = 0;
        if !self.rx_starved {
            ev |= libc::POLLIN;
        }
        if self.tx_blocked {
            ev |= libc::POLLOUT;
        }
        ev
    }

    /// The tap became writable: TX may go on.
    pub fn tap_writable(&mut self) {
        self.tx_blocked = false;
    }

    /// The tap reported POLLERR/POLLHUP/POLLNVAL.
    pub fn tap_broken(&mut self) {
        if !self.tap_failed {
            tracing::warn!(
                "tap fd {}: error or hang-up; the NIC is cut off",
                self.tap_fd()
            );
        }
        self.tap_failed = true;
    }

    /// TX left chains behind at its budget: run it again soon.
    pub fn tx_pending(&self) -> bool {
        self.tx_more && !self.tx_blocked
    }

    fn tap_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.tap)
    }
}

/// The most descriptors one chain may have (an indirect table may hold
/// 65535): Linux's largest, a 64 KiB receive buffer of single pages, has
/// 19.
pub const MAX_DESCRIPTORS: usize = 64;

/// Why a chain is not used.
enum ChainError {
    /// Malformed: returned to the guest unused, the device goes on.
    Drop(String),
    /// Outside guest memory: the device is marked broken.
    Broken(String),
}

/// Gathers a chain's buffers into `segs` in one pass that follows at most
/// [`MAX_DESCRIPTORS`] descriptors, checking each goes the expected way
/// (device-writable for RX) and lies inside guest memory. The copy then
/// uses only `segs`: however the guest builds or rewrites the chain, it
/// costs a bounded number of reads. Returns the total length.
fn gather(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    writable: bool,
    segs: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, ChainError> {
    segs.clear();
    let mut total = 0usize;
    for (n, d) in chain.take(MAX_DESCRIPTORS + 1).enumerate() {
        if n == MAX_DESCRIPTORS {
            return Err(ChainError::Drop(format!(
                "is longer than {MAX_DESCRIPTORS} descriptors"
            )));
        }
        if d.is_write_only() != writable {
            return Err(ChainError::Drop(
                if writable {
                    "has device-readable descriptors"
                } else {
                    "has device-writable descriptors"
                }
                .into(),
            ));
        }
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(ChainError::Broken(format!(
                "buffer {:#x}+{len} is outside guest memory",
                d.addr().0
            )));
        }
        total = total.saturating_add(len);
        segs.push((d.addr(), len));
    }
    Ok(total)
}

/// Puts a popped chain back at the head of the available ring.
fn unpop(q: &mut Queue) {
    use virtio_queue::QueueT;
    let n = q.next_avail().wrapping_sub(1);
    q.set_next_avail(n);
}

impl VirtioDevice for Net {
    /// What the loop polls the tap for, and whether TX must run again:
    /// receive buffers came back, TX hit its budget or the tap's limit.
    fn loop_interest(&self) -> u64 {
        u64::from(self.poll_events() as u16) | (u64::from(self.tx_pending()) << 16)
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_RING_F_INDIRECT_DESC;
        if self.mtu.is_some() {
            f |= VIRTIO_NET_F_MTU;
        }
        if self.tap.vnet_hdr() {
            f |= OFFLOADS;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config(&self) -> Vec<u8> {
        // mac[6], status (VIRTIO_NET_F_STATUS not offered), max virtqueue
        // pairs (no MQ), mtu.
        let mut c = self.mac.to_vec();
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&1u16.to_le_bytes());
        c.extend_from_slice(&self.mtu.unwrap_or(1500).to_le_bytes());
        c
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, String> {
        let q = queues
            .get_mut(index)
            .ok_or_else(|| format!("no queue {index}"))?;
        match index {
            RXQ => self.process_rx(q, mem),
            TXQ => self.process_tx(q, mem),
            _ => Err(format!("no queue {index}")),
        }
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
        let mut off = 0;
        if features & VIRTIO_NET_F_GUEST_CSUM != 0 {
            off |= tap::TUN_F_CSUM;
            if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                off |= tap::TUN_F_TSO4;
            }
            if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
                off |= tap::TUN_F_TSO6;
            }
            if features & VIRTIO_NET_F_GUEST_ECN != 0
                && off & (tap::TUN_F_TSO4 | tap::TUN_F_TSO6) != 0
            {
                off |= tap::TUN_F_TSO_ECN;
            }
        }
        if let Err(e) = self.tap.set_offload(off) {
            // The guest can renegotiate at will: one line per device.
            if !self.offload_warned {
                tracing::warn!("TUNSETOFFLOAD {off:#x}: {e} (receive offloads stay off)");
                self.offload_warned = true;
            }
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.rx_starved = false;
        self.tx_blocked = false;
        self.tx_more = false;
    }
}

#[cfg(test)]
mod tests;
