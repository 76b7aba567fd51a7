//! Host → guest: frames from the tap into the guest's receive buffers.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{gather, unpop, ChainError, Net, BUDGET, HDR_LEN};
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
            let room = match gather(chain, mem, true, &mut self.segs) {
                Ok(room) if room >= HDR_LEN => room,
                Ok(room) => {
                    guest_fault!(
                        "net receive chain {head} of {room} bytes: no room for the header"
                    );
                    q.add_used(mem, head, 0)
                        .map_err(|e| format!("used ring: {e}"))?;
                    used = true;
                    continue;
                }
                Err(ChainError::Drop(why)) => {
                    guest_fault!("net receive chain {head} {why}");
                    q.add_used(mem, head, 0)
                        .map_err(|e| format!("used ring: {e}"))?;
                    used = true;
                    continue;
                }
                Err(ChainError::Broken(why)) => {
                    return Err(format!("receive chain {head}: {why}"));
                }
            };
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
            let mut off = 0;
            for &(addr, len) in &self.segs {
                if off == total {
                    break;
                }
                let n = len.min(total - off);
                mem.write_slice(&self.rx_buf[off..off + n], addr)
                    .map_err(|e| format!("receive buffer: {e}"))?;
                off += n;
            }
            q.add_used(mem, head, total as u32)
                .map_err(|e| format!("used ring: {e}"))?;
            self.stats.rx_frames += 1;
            used = true;
        }
        Ok(used)
    }
}
