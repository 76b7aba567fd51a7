//! virtio-fs as a vhost-user frontend: virtiofsd serves the queues itself
//! from the (shared, memfd-backed) guest memory; hyper-vmm owns the
//! virtio-mmio registers and the config space (tag, one request queue),
//! hands virtiofsd the rings once the driver is ready, and passes the
//! driver's notifications (a KVM ioeventfd per queue, or a write on the
//! MMIO exit path) and virtiofsd's interrupts (the device's irqfd) along
//! without ever touching a request.
//!
//! What the guest controls and the VMM checks: the features it accepts
//! (a subset of what is offered, see [`GUEST_FEATURES`]), queue sizes
//! (power of two, at most [`QUEUE_SIZE`]; the transport), and the ring
//! addresses (each ring wholly inside one region of guest memory before
//! it is translated for virtiofsd; [`conn`]). The requests themselves are
//! virtiofsd's to validate.

pub mod conn;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::conn::{ConnError, Connection, RingSetup};
use super::mmio::{VirtioDevice, INT_USED_RING, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_FS: u32 = 26;
/// The high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// virtiofsd's own limit.
pub const QUEUE_SIZE: u16 = 1024;
/// virtio-fs config: `tag[36]`, then `num_request_queues` (le32).
pub use hyper_vmm_config::{valid_tag, TAG_LEN};

const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// What the guest may be offered, of what virtiofsd offers: no
/// notification queue (VIRTIO_FS_F_NOTIFICATION), no packed rings, no
/// IOMMU/platform access (the rings are plain guest-physical).
pub const GUEST_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("share tag {0:?}: 1..=36 characters of [A-Za-z0-9_-]")]
    BadTag(String),
    #[error("share {tag}: {source}")]
    Conn { tag: String, source: ConnError },
    #[error("share {tag}: virtiofsd does not offer VIRTIO_F_VERSION_1 (features {features:#x})")]
    NoVersion1 { tag: String, features: u64 },
    #[error("share {tag}: eventfd: {source}")]
    EventFd { tag: String, source: std::io::Error },
}

pub struct Fs {
    tag: String,
    conn: Connection,
    offered: u64,
    acked: u64,
    /// Per queue: signalled when the driver notifies it; virtiofsd waits on
    /// it. The VMM registers each as a KVM ioeventfd where it can.
    kicks: Vec<EventFd>,
    /// The device's interrupt (an irqfd): virtiofsd signals it directly.
    call: EventFd,
}

impl Fs {
    /// Connects to virtiofsd at `socket` and negotiates; `call` is the
    /// device's irqfd.
    pub fn new(socket: &Path, tag: &str, call: EventFd, limit: Duration) -> Result<Self, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::BadTag(tag.to_string()));
        }
        let conn_err = |source| FsError::Conn {
            tag: tag.to_string(),
            source,
        };
        let conn = Connection::open(socket, NUM_QUEUES, limit).map_err(conn_err)?;
        let features = conn.backend_features();
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NoVersion1 {
                tag: tag.to_string(),
                features,
            });
        }
        let kicks = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| FsError::EventFd {
                tag: tag.to_string(),
                source,
            })?;
        Ok(Self {
            tag: tag.to_string(),
            conn,
            offered: features & GUEST_FEATURES,
            acked: 0,
            kicks,
            call,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The eventfd to register as queue `index`'s ioeventfd.
    pub fn kick(&self, index: usize) -> Option<&EventFd> {
        self.kicks.get(index)
    }

    /// The vhost-user socket, for the event loop to poll.
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.conn.raw_fd()
    }

    /// After the socket polled readable: `Err` when virtiofsd is gone.
    pub fn check(&mut self) -> Result<(), String> {
        self.conn.check()
    }

    pub fn lost(&self) -> Option<&str> {
        self.conn.lost()
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; TAG_LEN + 4];
        let n = self.tag.len().min(TAG_LEN);
        c[..n].copy_from_slice(&self.tag.as_bytes()[..n]);
        c[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    /// Only reached without an ioeventfd (or for the transport's sweep at
    /// DRIVER_OK): pass the notification on.
    fn process_queue(
        &mut self,
        index: usize,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<bool, String> {
        if let Some(why) = self.conn.lost() {
            return Err(why.to_string());
        }
        if let Some(k) = self.kicks.get(index) {
            k.write(1).map_err(|e| format!("kick eventfd: {e}"))?;
        }
        Ok(false)
    }

    fn activate(&mut self, queues: &[Queue], mem: &GuestMemoryMmap) -> Result<(), String> {
        let rings: Vec<RingSetup<'_>> = queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready())
            .filter_map(|(index, queue)| {
                self.kicks
                    .get(index)
                    .map(|kick| RingSetup { index, queue, kick })
            })
            .collect();
        if rings.is_empty() {
            return Err("DRIVER_OK with no queue ready".into());
        }
        self.conn
            .activate(self.acked, mem, &rings, &self.call)
            .map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        self.acked = 0;
        if let Err(e) = self.conn.stop() {
            tracing::error!(tag = %self.tag, "virtio-fs reset: {e}");
        }
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    /// virtiofsd raises the interrupt through the irqfd without the
    /// transport knowing: while it runs the rings, "used buffers" is always
    /// pending, so the driver's handler looks at the rings on every
    /// interrupt (a spurious look is harmless).
    fn interrupt_status(&self) -> u32 {
        if self.conn.is_running() {
            INT_USED_RING
        } else {
            0
        }
    }
}
