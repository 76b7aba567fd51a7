//! Host → guest: frames from the tap into the guest's receive buffers.

use std::io::{self, Write};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{unpop, Net, BUDGET, HDR_LEN};
use crate::guest_fault;

impl Net {
    /// Moves frames from the tap into receive chains until the tap is
    /// empty, the guest has no buffer left, or [`BUDGET`] frames went by.
    /// A chain is taken before the tap is read, so a guest that gives no
    /// buffers leaves its frames in the tap's (kernel-bounded) queue.
    pub(super) fn process_rx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, String> {
        self.rx_starved = false;
        let mut used = false;
        for _ in 0..BUDGET {
            if self.tap_failed {
                break;
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            if chain.clone().readable().next().is_some() {
                guest_fault!("net receive chain {head} has device-readable descriptors");
                q.add_used(mem, head, 0)
                    .map_err(|e| format!("used ring: {e}"))?;
                used = true;
                continue;
            }
            let mut writer = chain
                .writer(mem)
                .map_err(|e| format!("receive buffer: {e}"))?;
            let room = writer.available_bytes();
            if room < HDR_LEN {
                guest_fault!("net receive chain {head} of {room} bytes: no room for the header");
                q.add_used(mem, head, 0)
                    .map_err(|e| format!("used ring: {e}"))?;
                used = true;
                continue;
            }
            // Without IFF_VNET_HDR the tap gives bare frames: leave room
            // for a zeroed header in front.
            let at = if self.tap.vnet_hdr() { 0 } else { HDR_LEN };
            let n = match self.tap.recv(&mut self.rx_buf[at..]) {
                Ok(0) => {
                    // A tap never reads 0 bytes; a socket stand-in does when
                    // its peer is gone.
                    unpop(q);
                    self.tap_broken();
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    unpop(q);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    unpop(q);
                    continue;
                }
                Err(e) => {
                    unpop(q);
                    tracing::warn!("tap read: {e}");
                    self.tap_broken();
                    break;
                }
            };
            let total = at + n;
            if total < HDR_LEN {
                // Shorter than its own header: nothing to deliver.
                self.stats.rx_dropped += 1;
                unpop(q);
                continue;
            }
            if at != 0 {
                self.rx_buf[..HDR_LEN].fill(0);
            }
            // num_buffers: always one chain per frame (no MRG_RXBUF).
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            if total > room {
                guest_fault!(
                    "net frame of {} bytes dropped: receive chain {head} has {room}",
                    total - HDR_LEN
                );
                self.stats.rx_dropped += 1;
                unpop(q);
                continue;
            }
            writer
                .write_all(&self.rx_buf[..total])
                .map_err(|e| format!("receive buffer: {e}"))?;
            q.add_used(mem, head, total as u32)
                .map_err(|e| format!("used ring: {e}"))?;
            self.stats.rx_frames += 1;
            used = true;
        }
        Ok(used)
    }
}
