//! Device state: the serial port, the virtio console's buffered bytes, and
//! every virtio-mmio transport (status, features, queue addresses, sizes and
//! ring positions, interrupt status).

use virtio_queue::QueueState;
use vm_superio::serial::SerialState;

use super::format::{Reader, Writer};
use super::SnapshotError;
use crate::devices::console::{RX_CAP, TX_CAP};

/// More queues than any device here has.
const MAX_QUEUES: usize = 64;
const SERIAL_FIFO: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportState {
    pub device_type: u32,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub broken: bool,
    pub queues: Vec<QueueState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicesState {
    pub serial: SerialState,
    /// Host input the guest had not taken yet, guest output the host had not
    /// read yet.
    pub console_rx: Vec<u8>,
    pub console_tx: Vec<u8>,
    /// Console, disks, NICs, in bus order.
    pub transports: Vec<TransportState>,
}

fn put_queue(w: &mut Writer, q: &QueueState) {
    w.u16(q.max_size);
    w.u16(q.next_avail);
    w.u16(q.next_used);
    w.u8(u8::from(q.event_idx_enabled));
    w.u16(q.size);
    w.u8(u8::from(q.ready));
    w.u64(q.desc_table);
    w.u64(q.avail_ring);
    w.u64(q.used_ring);
}

fn get_queue(r: &mut Reader<'_>) -> Result<QueueState, SnapshotError> {
    Ok(QueueState {
        max_size: r.u16()?,
        next_avail: r.u16()?,
        next_used: r.u16()?,
        event_idx_enabled: r.bool()?,
        size: r.u16()?,
        ready: r.bool()?,
        desc_table: r.u64()?,
        avail_ring: r.u64()?,
        used_ring: r.u64()?,
    })
}

impl DevicesState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let s = &self.serial;
        for b in [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ] {
            w.u8(b);
        }
        w.blob(&s.in_buffer[..s.in_buffer.len().min(SERIAL_FIFO)]);
        w.blob(&self.console_rx);
        w.blob(&self.console_tx);
        w.u32(self.transports.len() as u32);
        for t in &self.transports {
            w.u32(t.device_type);
            w.u32(t.queue_sel);
            w.u32(t.device_features_sel);
            w.u32(t.driver_features_sel);
            w.u64(t.driver_features);
            w.u32(t.status);
            w.u32(t.interrupt_status);
            w.u32(t.config_generation);
            w.u8(u8::from(t.broken));
            w.u32(t.queues.len() as u32);
            for q in &t.queues {
                put_queue(&mut w, q);
            }
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader::new(b);
        let mut regs = [0u8; 9];
        for x in regs.iter_mut() {
            *x = r.u8()?;
        }
        let serial = SerialState {
            baud_divisor_low: regs[0],
            baud_divisor_high: regs[1],
            interrupt_enable: regs[2],
            interrupt_identification: regs[3],
            line_control: regs[4],
            line_status: regs[5],
            modem_control: regs[6],
            modem_status: regs[7],
            scratch: regs[8],
            in_buffer: r.blob(SERIAL_FIFO, "serial FIFO")?.to_vec(),
        };
        let console_rx = r.blob(RX_CAP, "console input")?.to_vec();
        let console_tx = r.blob(TX_CAP, "console output")?.to_vec();
        let n = r.u32()? as usize;
        if n > crate::layout::VIRTIO_IRQS.len() {
            return Err(SnapshotError::Corrupt(format!("{n} virtio devices")));
        }
        let mut transports = Vec::with_capacity(n);
        for _ in 0..n {
            let device_type = r.u32()?;
            let queue_sel = r.u32()?;
            let device_features_sel = r.u32()?;
            let driver_features_sel = r.u32()?;
            let driver_features = r.u64()?;
            let status = r.u32()?;
            let interrupt_status = r.u32()?;
            let config_generation = r.u32()?;
            let broken = r.bool()?;
            let nq = r.u32()? as usize;
            if nq > MAX_QUEUES {
                return Err(SnapshotError::Corrupt(format!("{nq} queues")));
            }
            let mut queues = Vec::with_capacity(nq);
            for _ in 0..nq {
                queues.push(get_queue(&mut r)?);
            }
            transports.push(TransportState {
                device_type,
                queue_sel,
                device_features_sel,
                driver_features_sel,
                driver_features,
                status,
                interrupt_status,
                config_generation,
                broken,
                queues,
            });
        }
        r.finish("devices section")?;
        Ok(Self {
            serial,
            console_rx,
            console_tx,
            transports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let s = DevicesState {
            serial: SerialState::default(),
            console_rx: b"in".to_vec(),
            console_tx: b"out".to_vec(),
            transports: vec![TransportState {
                device_type: 3,
                queue_sel: 1,
                device_features_sel: 0,
                driver_features_sel: 1,
                driver_features: 1 << 32,
                status: 0xf,
                interrupt_status: 1,
                config_generation: 0,
                broken: false,
                queues: vec![QueueState {
                    max_size: 256,
                    next_avail: 7,
                    next_used: 7,
                    event_idx_enabled: false,
                    size: 256,
                    ready: true,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                }],
            }],
        };
        let b = s.encode();
        assert_eq!(DevicesState::decode(&b).unwrap(), s);
        for n in 0..b.len() {
            assert!(DevicesState::decode(&b[..n]).is_err(), "{n}");
        }
    }
}
