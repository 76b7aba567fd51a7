//! VM-wide KVM state: the in-kernel PIC pair and IOAPIC, the PIT, and the
//! KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

use super::format::{Reader, Writer};
use super::SnapshotError;

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

#[derive(Clone, Default)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    pub chips: [kvm_irqchip; 3],
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn io(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(what, e.to_string())
}

impl VmState {
    pub fn capture(vm: &VmFd) -> Result<Self, SnapshotError> {
        let mut s = Self::default();
        for (chip, id) in s.chips.iter_mut().zip(CHIPS) {
            chip.chip_id = id;
            vm.get_irqchip(chip).map_err(io("KVM_GET_IRQCHIP"))?;
        }
        s.pit = vm.get_pit2().map_err(io("KVM_GET_PIT2"))?;
        s.clock = vm.get_clock().map_err(io("KVM_GET_CLOCK"))?;
        // KVM_SET_CLOCK refuses flags it does not take; TSC_STABLE is a
        // report, not a setting.
        s.clock.flags &= !KVM_CLOCK_TSC_STABLE;
        Ok(s)
    }

    pub fn apply(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        vm.set_pit2(&self.pit).map_err(io("KVM_SET_PIT2"))?;
        vm.set_clock(&self.clock).map_err(io("KVM_SET_CLOCK"))?;
        for chip in &self.chips {
            vm.set_irqchip(chip).map_err(io("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for c in &self.chips {
            w.pod(c);
        }
        w.pod(&self.pit);
        w.pod(&self.clock);
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader::new(b);
        let mut s = Self::default();
        for (c, id) in s.chips.iter_mut().zip(CHIPS) {
            *c = r.pod("irqchip")?;
            if c.chip_id != id {
                return Err(SnapshotError::Corrupt(format!(
                    "irqchip id {} where {id} belongs",
                    c.chip_id
                )));
            }
        }
        s.pit = r.pod("PIT")?;
        s.clock = r.pod("KVM clock")?;
        r.finish("VM section")?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_ids_are_checked() {
        let mut s = VmState::default();
        for (c, id) in s.chips.iter_mut().zip(CHIPS) {
            c.chip_id = id;
        }
        let b = s.encode();
        assert!(VmState::decode(&b).is_ok());
        let mut bad = s.clone();
        bad.chips.swap(0, 2);
        assert!(VmState::decode(&bad.encode()).is_err());
    }
}
