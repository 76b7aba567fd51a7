//! The device buses: port I/O and MMIO each map non-overlapping address
//! ranges to the device serving them, through [`BusDevice`]. A vCPU exit
//! looks its address up here and hands the device the offset into its
//! range; the bus knows nothing about any device (what an access means,
//! and what it sets off elsewhere — a reset, waking the event loop — is
//! the device's own business). As Firecracker's and Cloud Hypervisor's
//! `vm-device`-style buses, written here rather than taken from rust-vmm's
//! `vm-device` crate: that crate has one release (0.1.0, 2021) and no
//! maintenance since, and its `IoManager` would still need the typed
//! handles the event loop and snapshots use beside it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::lock;

/// A device on a bus. `offset` is from the start of the range it was
/// inserted at; an access is looked up by its first byte, so one that
/// runs past the end of the range reaches the device, which checks
/// `offset + data.len()` itself (every device here takes guest input).
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes: fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device as the bus holds it; whoever inserted it may keep another
/// `Arc` of its concrete type (the event loop, snapshots): one lock.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("an empty range at {base:#x}")]
    Empty { base: u64 },
    #[error("the range at {base:#x} of {len:#x} wraps around the address space")]
    Wraps { base: u64, len: u64 },
    #[error("{base:#x}..{end:#x} overlaps {other_base:#x}..{other_end:#x}")]
    Overlap {
        base: u64,
        end: u64,
        other_base: u64,
        other_end: u64,
    },
}

struct Range {
    /// One past the last address.
    end: u64,
    device: SharedDevice,
}

/// Non-overlapping ranges by their base address.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `base..base+len` to `device`; refuses an empty range, one that
    /// wraps, and one that overlaps a range already mapped.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { base });
        }
        let end = base.checked_add(len).ok_or(BusError::Wraps { base, len })?;
        // The range starting at or before `base`, and the first one after.
        let before = self.ranges.range(..=base).next_back();
        let after = self.ranges.range(base..).next();
        for (&other_base, other) in before.into_iter().chain(after) {
            if other_base < end && base < other.end {
                return Err(BusError::Overlap {
                    base,
                    end,
                    other_base,
                    other_end: other.end,
                });
            }
        }
        self.ranges.insert(base, Range { end, device });
        Ok(())
    }

    /// The device whose range holds `addr`, and the offset into it.
    pub fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        (addr < range.end).then(|| (addr - base, &range.device))
    }

    /// A read at `addr`; false (and `data` all 0xff, as an empty bus
    /// reads) when nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A write at `addr`; false (and nothing done) when nothing is mapped
    /// there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access; reads answer the offset's low byte.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, SharedDevice) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let d: SharedDevice = p.clone();
        (p, d)
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, probe().1).unwrap();
        for (base, len) in [
            (0x100, 0x10),
            (0x0f8, 0x9),
            (0x10f, 1),
            (0x108, 0x100),
            (0x0f0, 0x100),
            (0x104, 2),
        ] {
            let e = bus.insert(base, len, probe().1).unwrap_err();
            assert!(
                matches!(
                    e,
                    BusError::Overlap {
                        other_base: 0x100,
                        other_end: 0x110,
                        ..
                    }
                ),
                "{base:#x}+{len:#x}: {e}"
            );
        }
        // Touching ranges on either side are fine.
        bus.insert(0x0f0, 0x10, probe().1).unwrap();
        bus.insert(0x110, 0x10, probe().1).unwrap();
        // Between two: it must fit the gap exactly.
        let mut bus = Bus::new();
        bus.insert(0x0, 0x10, probe().1).unwrap();
        bus.insert(0x20, 0x10, probe().1).unwrap();
        assert!(bus.insert(0x10, 0x11, probe().1).is_err());
        assert!(bus.insert(0xf, 0x2, probe().1).is_err());
        bus.insert(0x10, 0x10, probe().1).unwrap();
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(0x10, 0, probe().1),
            Err(BusError::Empty { base: 0x10 })
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe().1),
            Err(BusError::Wraps { .. })
        ));
        bus.insert(u64::MAX - 1, 1, probe().1).unwrap();
        assert!(bus.find(u64::MAX - 1).is_some());
        assert!(bus.find(u64::MAX).is_none());
    }

    #[test]
    fn lookup_at_the_edges_of_a_range() {
        let mut bus = Bus::new();
        let (a, da) = probe();
        let (b, db) = probe();
        bus.insert(0x3f8, 8, da).unwrap();
        bus.insert(0x400, 4, db).unwrap();
        assert_eq!(bus.find(0x3f8).map(|(o, _)| o), Some(0));
        assert_eq!(bus.find(0x3ff).map(|(o, _)| o), Some(7));
        assert_eq!(bus.find(0x400).map(|(o, _)| o), Some(0), "the next range");
        assert_eq!(bus.find(0x403).map(|(o, _)| o), Some(3));
        assert!(bus.find(0x3f7).is_none());
        assert!(bus.find(0x404).is_none());
        assert!(bus.write(0x3ff, &[1]));
        assert!(bus.write(0x400, &[2, 3]));
        assert_eq!(lock(&a).writes, vec![(7, vec![1])]);
        assert_eq!(lock(&b).writes, vec![(0, vec![2, 3])]);
        let mut d = [0u8; 2];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5, 5]);
    }

    #[test]
    fn unmapped_reads_are_all_ones_and_writes_go_nowhere() {
        let mut bus = Bus::new();
        let (a, da) = probe();
        bus.insert(0x1000, 0x1000, da).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0xfff, &mut d));
        assert_eq!(d, [0xff; 4]);
        let mut d = [0u8; 1];
        assert!(!bus.read(0x2000, &mut d));
        assert_eq!(d, [0xff]);
        assert!(!bus.write(0x2000, &[1, 2, 3, 4]));
        assert!(!Bus::new().write(0, &[1]));
        assert!(lock(&a).writes.is_empty());
    }
}
