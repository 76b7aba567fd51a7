//! COM1: vm-superio's 16550A, its interrupt on an eventfd (irqfd), its
//! output to the console log with a size cap.

use std::fs::File;
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A sink that stops writing after `limit` bytes (a guest printing forever
/// must not fill the host's disk), and counts the first byte's arrival.
pub struct BoundedLog {
    out: Box<dyn Write + Send>,
    written: u64,
    limit: u64,
    first_byte: Option<std::time::Instant>,
}

impl BoundedLog {
    pub fn new(out: Box<dyn Write + Send>, limit: u64) -> Self {
        Self {
            out,
            written: 0,
            limit,
            first_byte: None,
        }
    }

    pub fn file(file: File, limit: u64) -> Self {
        Self::new(Box::new(file), limit)
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.first_byte.is_none() {
            self.first_byte = Some(std::time::Instant::now());
        }
        let room = self.limit.saturating_sub(self.written);
        if room == 0 {
            return Ok(buf.len());
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.out.write_all(&buf[..take])?;
        self.written += take as u64;
        if self.written >= self.limit {
            let _ = self
                .out
                .write_all(b"\n[hyper-vmm: console log limit reached, output dropped]\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, BoundedLog>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: BoundedLog) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A serial port in a saved state (registers and receive FIFO).
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        irq: EventFd,
        out: BoundedLog,
    ) -> Result<Self, String> {
        Serial::from_state(state, IrqTrigger(irq), NoEvents, out)
            .map(|serial| Self { serial })
            .map_err(|e| format!("serial state: {e:?}"))
    }

    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    pub fn log(&self) -> &BoundedLog {
        self.serial.writer()
    }
}

/// COM1's eight registers on the port bus (offset = register).
impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(reg) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        let v = self.serial.read(reg);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(reg), Some(&v)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.serial.write(reg, v) {
            tracing::debug!("serial write: {e:?}");
        }
        // Line-at-a-time flushing is the writer's job; a File does not buffer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_the_log_and_the_cap_holds() {
        let sink = Shared::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(evt, BoundedLog::new(Box::new(sink.clone()), 4));
        for b in b"hello world" {
            dev.write(0, &[*b]);
        }
        let got = sink.0.lock().unwrap().clone();
        assert!(got.starts_with(b"hell"), "{got:?}");
        assert!(!got.windows(5).any(|w| w == b"world"));
        assert_eq!(dev.log().written(), 4);
    }

    #[test]
    fn every_register_offset_is_safe() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(evt, BoundedLog::new(Box::new(io::sink()), 1 << 20));
        for off in (0..=256u64).chain([u64::MAX]) {
            for v in [0u8, 0x55, 0xff] {
                dev.write(off, &[v]);
                dev.read(off, &mut [0u8; 2]);
            }
            dev.write(off, &[]);
            dev.read(off, &mut []);
        }
    }
}
