//! The debug-exit port (as QEMU's `isa-debug-exit`): a test guest writes
//! its status there (8 to 32 bits) and the VM ends with it. Only on the
//! bus when hyper-vmm runs with `--debug-exit`.

use super::bus::BusDevice;

pub struct DebugExit {
    /// Ends the VM with the guest's status.
    on_exit: Box<dyn Fn(u32) + Send>,
}

impl DebugExit {
    pub fn new(on_exit: Box<dyn Fn(u32) + Send>) -> Self {
        Self { on_exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        (self.on_exit)(u32::from_le_bytes(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_status_is_the_little_endian_value_written() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut d = DebugExit::new(Box::new(move |s| g.lock().unwrap().push(s)));
        d.write(0, &[3]);
        d.write(0, &0x0102_0304u32.to_le_bytes());
        d.write(0, &[]);
        let mut r = [0u8; 4];
        d.read(0, &mut r);
        assert_eq!(r, [0xff; 4]);
        assert_eq!(*got.lock().unwrap(), vec![3, 0x0102_0304]);
    }
}
