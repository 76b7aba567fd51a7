//! A minimal i8042 controller: enough for Linux's probe to finish at once
//! (without it every command waits for a timeout), and the reset command
//! that `reboot=k` uses. No keyboard or mouse is attached.

use std::collections::VecDeque;

use super::bus::BusDevice;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
pub const CMD_RESET: u8 = 0xfe;

/// Most bytes held for the guest to read: a guest that never reads cannot
/// grow the queue.
const OUT_MAX: usize = 16;

#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    status: u8,
    out: VecDeque<u8>,
    /// The command whose data byte the next port-0x60 write is.
    pending: Option<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        Self {
            // Interrupts off, system flag, keyboard+aux clocks disabled.
            ctr: 0x34,
            status: STATUS_SYS,
            out: VecDeque::new(),
            pending: None,
        }
    }
}

/// What a write to the controller asks of the VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Reset,
}

impl I8042 {
    fn push(&mut self, b: u8) {
        if self.out.len() < OUT_MAX {
            self.out.push_back(b);
        }
    }

    pub fn read_status(&self) -> u8 {
        self.status | if self.out.is_empty() { 0 } else { STATUS_OBF }
    }

    pub fn read_data(&mut self) -> u8 {
        self.out.pop_front().unwrap_or(0)
    }

    pub fn write_command(&mut self, cmd: u8) -> Action {
        self.status |= STATUS_CMD;
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push(0x00),
            CMD_READ_OUTPORT => self.push(0x01),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_RESET => return Action::Reset,
            // Enable/disable ports, pulse lines, …: nothing to do.
            _ => {}
        }
        Action::None
    }

    pub fn write_data(&mut self, b: u8) {
        self.status &= !STATUS_CMD;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = b,
            // Loopback writes come back as if the device sent them.
            Some(CMD_WRITE_KBD_OUT) | Some(CMD_WRITE_AUX_OUT) => self.push(b),
            // Bytes for a keyboard or mouse that is not there.
            _ => {}
        }
    }
}

/// The controller on the port bus: the data port at offset 0 (port
/// 0x60) and the command/status port at offset 4 (0x64); the ports
/// between are not its (reads answer 0xff, as unmapped ports do). A
/// reset command calls `on_reset`, which ends the VM.
pub struct I8042Device {
    ctrl: I8042,
    on_reset: Box<dyn Fn() + Send>,
}

/// Offsets from the data port.
pub const DATA: u64 = 0;
pub const COMMAND: u64 = 4;
/// The ports the device spans on the bus (0x60..=0x64).
pub const PORTS: u64 = 5;
const _: () = assert!(
    crate::layout::I8042_CMD_PORT as u64 == crate::layout::I8042_DATA_PORT as u64 + COMMAND
);

impl I8042Device {
    pub fn new(on_reset: Box<dyn Fn() + Send>) -> Self {
        Self {
            ctrl: I8042::default(),
            on_reset,
        }
    }
}

impl I8042Device {
    fn command(&mut self, cmd: u8) {
        if self.ctrl.write_command(cmd) == Action::Reset {
            (self.on_reset)();
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => self.ctrl.read_data(),
            COMMAND => self.ctrl.read_status(),
            _ => {
                data.fill(0xff);
                return;
            }
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            DATA => self.ctrl.write_data(b),
            COMMAND => self.command(b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_bus_a_reset_calls_back_and_other_ports_are_not_its() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let resets = Arc::new(AtomicU32::new(0));
        let r = resets.clone();
        let mut d = I8042Device::new(Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }));
        d.write(COMMAND, &[CMD_READ_CTR]);
        let mut v = [0u8; 2];
        d.read(COMMAND, &mut v);
        assert_eq!(v[0] & STATUS_OBF, STATUS_OBF);
        assert_eq!(v[1], 0);
        d.read(DATA, &mut v);
        assert_eq!(v, [0x34, 0]);
        d.read(1, &mut v);
        assert_eq!(v, [0xff, 0xff]);
        d.write(2, &[CMD_RESET]);
        d.write(DATA, &[CMD_RESET]);
        assert_eq!(resets.load(Ordering::Relaxed), 0);
        d.write(COMMAND, &[CMD_RESET]);
        assert_eq!(resets.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn linux_probe_sequence_answers() {
        let mut k = I8042::default();
        assert_eq!(k.read_status() & STATUS_OBF, 0);
        k.write_command(CMD_READ_CTR);
        assert_ne!(k.read_status() & STATUS_OBF, 0);
        assert_eq!(k.read_data(), 0x34);
        k.write_command(CMD_WRITE_CTR);
        k.write_data(0x47);
        k.write_command(CMD_READ_CTR);
        assert_eq!(k.read_data(), 0x47);
        k.write_command(CMD_SELF_TEST);
        assert_eq!(k.read_data(), 0x55);
        k.write_command(CMD_WRITE_AUX_OUT);
        k.write_data(0x5a);
        assert_eq!(k.read_data(), 0x5a);
        assert_eq!(k.read_status() & STATUS_OBF, 0);
    }

    #[test]
    fn reset_and_bounded_output() {
        let mut k = I8042::default();
        assert_eq!(k.write_command(CMD_RESET), Action::Reset);
        for _ in 0..1000 {
            k.write_command(CMD_READ_CTR);
        }
        assert_eq!(k.out.len(), OUT_MAX);
        for b in 0..=255u8 {
            k.write_command(b);
            k.write_data(b);
            let _ = k.read_data();
        }
    }
}
