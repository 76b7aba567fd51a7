//! A minimal i8042 controller: enough for Linux's probe to finish at once
//! (without it every command waits for a timeout), and the reset command
//! that `reboot=k` uses. No keyboard or mouse is attached.

use std::collections::VecDeque;

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

#[cfg(test)]
mod tests {
    use super::*;

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
