//! Guest → host: transmit chains written to the tap, one frame each.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{gather, unpop, ChainError, Net, BUDGET, ETH_HLEN, HDR_LEN, MAX_FRAME};
use crate::guest_fault;

impl Net {
    /// Sends transmit chains until the ring is empty, the tap is full (the
    /// chain goes back to the ring and TX waits for POLLOUT), or
    /// [`BUDGET`] chains went by. A malformed chain is returned to the
    /// guest unsent; a chain outside guest memory breaks the device.
    pub(super) fn process_tx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, String> {
        self.tx_more = false;
        if self.tx_blocked {
            return Ok(false);
        }
        let mut used = false;
        for i in 0..BUDGET {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if i + 1 == BUDGET {
                self.tx_more = true;
            }
            let len = match gather(chain, mem, false, &mut self.segs) {
                Ok(len) => len,
                Err(ChainError::Drop(why)) => {
                    guest_fault!("net transmit chain {head} {why}");
                    self.drop_tx(q, mem, head)?;
                    used = true;
                    continue;
                }
                Err(ChainError::Broken(why)) => {
                    return Err(format!("transmit chain {head}: {why}"));
                }
            };
            if !(HDR_LEN + ETH_HLEN..=HDR_LEN + MAX_FRAME).contains(&len) {
                guest_fault!("net transmit chain {head} of {len} bytes");
                self.drop_tx(q, mem, head)?;
                used = true;
                continue;
            }
            let mut off = 0;
            for &(addr, n) in &self.segs {
                mem.read_slice(&mut self.tx_buf[off..off + n], addr)
                    .map_err(|e| format!("transmit buffer: {e}"))?;
                off += n;
            }
            let frame = if self.tap.vnet_hdr() {
                &self.tx_buf[..len]
            } else {
                // No offload was offered: a header asking for one is a
                // guest bug, and the frame would leave with a bad checksum.
                if self.tx_buf[..2] != [0, 0] {
                    guest_fault!("net transmit header asks for an offload not offered");
                    self.drop_tx(q, mem, head)?;
                    used = true;
                    continue;
                }
                &self.tx_buf[HDR_LEN..len]
            };
            if self.tap_failed {
                self.stats.tx_dropped += 1;
            } else {
                match self.tap.send(frame) {
                    Ok(_) => self.stats.tx_frames += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Back-pressure: the chain stays in the ring.
                        unpop(q);
                        self.tx_blocked = true;
                        self.tx_more = false;
                        break;
                    }
                    Err(e) => {
                        // EIO (tap down), EINVAL (a header the kernel
                        // refused), ENOBUFS...: the frame is lost, as on a
                        // wire.
                        self.stats.tx_dropped += 1;
                        crate::devices::GUEST_FAULTS
                            .record(format_args!("tap write of {} bytes: {e}", frame.len()));
                    }
                }
            }
            q.add_used(mem, head, 0)
                .map_err(|e| format!("used ring: {e}"))?;
            used = true;
        }
        Ok(used)
    }

    fn drop_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, head: u16) -> Result<(), String> {
        self.stats.tx_dropped += 1;
        q.add_used(mem, head, 0)
            .map_err(|e| format!("used ring: {e}"))
    }
}
