//! virtio-console with one port (no MULTIPORT): the guest sees `/dev/hvc0`.
//! Bytes are bridged to a unix-socket connection the VMM accepted. Both
//! directions are buffered with fixed caps; when a buffer is full the
//! device stops taking descriptors, so a stalled peer slows the guest down
//! instead of growing host memory.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::mmio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::guest_fault;

pub const VIRTIO_ID_CONSOLE: u32 = 3;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_CAP: usize = 64 * 1024;
pub const TX_CAP: usize = 256 * 1024;
const RXQ: usize = 0;
const TXQ: usize = 1;

#[derive(Default)]
pub struct Console {
    rx_pending: VecDeque<u8>,
    tx_out: VecDeque<u8>,
    conn: Option<UnixStream>,
}

impl Console {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new host connection replaces the old one. Output buffered while no
    /// one was connected is kept.
    pub fn set_conn(&mut self, conn: Option<UnixStream>) {
        self.conn = conn;
    }

    /// Buffered (host input not yet given to the guest, guest output not
    /// yet sent to the host), for a snapshot.
    pub fn pending(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.rx_pending.iter().copied().collect(),
            self.tx_out.iter().copied().collect(),
        )
    }

    /// Restores what [`Self::pending`] returned (cut to the usual caps).
    pub fn set_pending(&mut self, rx: &[u8], tx: &[u8]) {
        self.rx_pending = rx.iter().copied().take(RX_CAP).collect();
        self.tx_out = tx.iter().copied().take(TX_CAP).collect();
    }

    pub fn conn(&self) -> Option<&UnixStream> {
        self.conn.as_ref()
    }

    pub fn rx_room(&self) -> usize {
        RX_CAP.saturating_sub(self.rx_pending.len())
    }

    pub fn has_output(&self) -> bool {
        !self.tx_out.is_empty()
    }

    /// Host → guest bytes (at most [`Self::rx_room`] are taken).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.rx_room());
        self.rx_pending.extend(&bytes[..n]);
        n
    }

    /// Reads what the host connection has (non-blocking). Returns Ok(false)
    /// when the peer closed.
    pub fn read_conn(&mut self) -> io::Result<bool> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(true);
        };
        let mut buf = [0u8; 4096];
        loop {
            let room = RX_CAP.saturating_sub(self.rx_pending.len());
            if room == 0 {
                return Ok(true);
            }
            let want = room.min(buf.len());
            match conn.read(&mut buf[..want]) {
                Ok(0) => {
                    self.conn = None;
                    return Ok(false);
                }
                Ok(n) => self.rx_pending.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    /// Writes buffered guest output to the connection (non-blocking).
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        while !self.tx_out.is_empty() {
            let (a, _) = self.tx_out.as_slices();
            match conn.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Takes output for tests that have no socket.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.tx_out.drain(..).collect()
    }

    fn deliver_rx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, String> {
        let mut used = false;
        while !self.rx_pending.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut writer = chain
                .writer(mem)
                .map_err(|e| format!("receive buffer: {e}"))?;
            let n = writer.available_bytes().min(self.rx_pending.len());
            if n == 0 {
                guest_fault!("console receive buffer without writable bytes");
            }
            let bytes: Vec<u8> = self.rx_pending.iter().take(n).copied().collect();
            writer
                .write_all(&bytes)
                .map_err(|e| format!("receive buffer: {e}"))?;
            self.rx_pending.drain(..n);
            q.add_used(mem, head, n as u32)
                .map_err(|e| format!("used ring: {e}"))?;
            used = true;
        }
        Ok(used)
    }

    fn take_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, String> {
        let mut used = false;
        while self.tx_out.len() < TX_CAP {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if chain.clone().writable().next().is_some() {
                guest_fault!("console transmit chain has device-writable descriptors (ignored)");
            }
            let mut reader = chain
                .reader(mem)
                .map_err(|e| format!("transmit buffer: {e}"))?;
            let room = TX_CAP - self.tx_out.len();
            let n = reader.available_bytes().min(room);
            if reader.available_bytes() > room {
                guest_fault!(
                    "console transmit chain of {} bytes truncated to {room}",
                    reader.available_bytes()
                );
            }
            let mut bytes = vec![0u8; n];
            reader
                .read_exact(&mut bytes)
                .map_err(|e| format!("transmit buffer: {e}"))?;
            self.tx_out.extend(bytes);
            q.add_used(mem, head, 0)
                .map_err(|e| format!("used ring: {e}"))?;
            used = true;
        }
        if let Err(e) = self.flush() {
            tracing::warn!("agent socket write: {e}; waiting for a new connection");
        }
        Ok(used)
    }
}

impl VirtioDevice for Console {
    /// Room for input (the loop reads the agent socket) and output to
    /// flush (it waits for the socket to take it).
    fn loop_interest(&self) -> u64 {
        u64::from(self.rx_room() > 0) | (u64::from(self.has_output()) << 1)
    }
    /// Receive buffers the guest just returned: the loop re-polls the
    /// connection.
    fn wake_on_notify(&self) -> bool {
        true
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config(&self) -> Vec<u8> {
        // cols, rows, max_nr_ports, emerg_wr: unused without features.
        vec![0; 12]
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
            RXQ => self.deliver_rx(q, mem),
            TXQ => self.take_tx(q, mem),
            _ => Err(format!("no queue {index}")),
        }
    }

    fn reset(&mut self) {
        // Pending host input stays: it is for whoever drives the port next.
    }
}

#[cfg(test)]
mod tests {
    use super::super::mmio::tests::bring_up;
    use super::super::mmio::MmioTransport;
    use super::super::testring::Ring;
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    fn setup() -> (MmioTransport<Console>, GuestMemoryMmap, Ring, Ring) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(Console::new(), mem.clone(), irq).unwrap();
        let rx = Ring::new(0x10000, 16);
        let tx = Ring::new(0x20000, 16);
        bring_up(&mut t, &[rx.addrs(), tx.addrs()]);
        (t, mem, rx, tx)
    }

    fn notify(t: &mut MmioTransport<Console>, q: u32) {
        t.write(0x50, &q.to_le_bytes());
    }

    #[test]
    fn echo_through_real_queues() {
        let (mut t, mem, mut rx, mut tx) = setup();
        mem.write_slice(b"ping", GuestAddress(0x40000)).unwrap();
        tx.add_chain(&mem, &[(0x40000, 4, false)]);
        notify(&mut t, 1);
        assert_eq!(t.device_mut().take_output(), b"ping");
        assert_eq!(tx.used_idx(&mem), 1);

        assert_eq!(t.device_mut().push_input(b"pong!"), 5);
        rx.add_chain(&mem, &[(0x50000, 3, true), (0x50010, 8, true)]);
        notify(&mut t, 0);
        assert_eq!(rx.used_idx(&mem), 1);
        assert_eq!(rx.used_len(&mem, 0), 5);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got[..3], GuestAddress(0x50000))
            .unwrap();
        mem.read_slice(&mut got[3..], GuestAddress(0x50010))
            .unwrap();
        assert_eq!(&got, b"pong!");
    }

    #[test]
    fn tx_buffer_outside_memory_breaks_the_device() {
        let (mut t, mem, _, mut tx) = setup();
        tx.add_chain(&mem, &[(0xfff_0000, 16, false)]);
        notify(&mut t, 1);
        assert!(t.is_broken());
        assert!(t.device_mut().take_output().is_empty());
    }

    #[test]
    fn looping_chain_is_bounded() {
        let (mut t, mem, _, mut tx) = setup();
        mem.write_slice(b"ab", GuestAddress(0x40000)).unwrap();
        tx.add_loop(&mem, 0x40000, 2);
        notify(&mut t, 1);
        let out = t.device_mut().take_output();
        // at most queue-size descriptors are followed
        assert!(out.len() <= 2 * 16, "{}", out.len());
    }

    #[test]
    fn tx_stops_taking_buffers_when_full() {
        let (mut t, mem, _, mut tx) = setup();
        // One chain of 15 descriptors x 32 KiB = 480 KiB > TX_CAP.
        let descs: Vec<_> = (0..15).map(|_| (0x80000u64, 32 * 1024u32, false)).collect();
        tx.add_chain(&mem, &descs);
        tx.add_chain(&mem, &[(0x40000, 4, false)]);
        notify(&mut t, 1);
        assert_eq!(t.device_mut().take_output().len(), TX_CAP);
        assert_eq!(tx.used_idx(&mem), 1, "second chain waits");
        notify(&mut t, 1);
        assert_eq!(tx.used_idx(&mem), 2);
    }

    #[test]
    fn rx_input_is_capped() {
        let mut c = Console::new();
        let big = vec![7u8; RX_CAP + 100];
        assert_eq!(c.push_input(&big), RX_CAP);
        assert_eq!(c.rx_room(), 0);
    }

    #[test]
    fn bad_avail_index_is_refused() {
        let (mut t, mem, _, mut tx) = setup();
        mem.write_slice(b"x", GuestAddress(0x40000)).unwrap();
        tx.add_chain(&mem, &[(0x40000, 1, false)]);
        tx.set_avail_idx(&mem, 1000); // far more than queue size
        notify(&mut t, 1);
        assert!(t.device_mut().take_output().len() <= 16);
    }
}
