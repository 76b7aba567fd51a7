//! One vCPU's architectural state, read and written with the KVM ioctls.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::format::{Reader, Writer};
use super::SnapshotError;

/// At most this many MSRs per vCPU are stored (KVM lists a few hundred).
const MAX_MSRS: usize = 4096;

#[derive(Default)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// None when this KVM refused KVM_GET_XSAVE (the FPU state above then
    /// carries x87/SSE).
    pub xsave: Option<kvm_xsave>,
    /// None when this KVM refused KVM_GET_XCRS or reported none (a host
    /// CPU without XSAVE, as the nested-SVM leg's `qemu64` L1).
    pub xcrs: Option<kvm_xcrs>,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    pub mp_state: kvm_mp_state,
}

fn io(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(what, e.to_string())
}

/// The MSRs KVM says a VMM should save, minus those this vCPU refuses to
/// read (KVM_GET_MSRS stops at the first it cannot read: that one is left
/// out and the rest asked again).
pub fn saved_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(io("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().iter().copied().take(MAX_MSRS).collect())
}

fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| SnapshotError::Kvm("MSR list", format!("{e:?}")))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(io("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
        if n < rest.len() {
            tracing::debug!(
                msr = format_args!("{:#x}", rest[n]),
                "MSR not readable: not saved"
            );
            rest = &rest[n + 1..];
        } else {
            rest = &[];
        }
    }
    Ok(out)
}

impl VcpuState {
    /// Reads everything. The vCPU must be out of KVM_RUN, with any pending
    /// I/O completed (see `immediate_exit` in the run loop).
    pub fn capture(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, SnapshotError> {
        let xsave = match vcpu.get_xsave() {
            Ok(x) => Some(x),
            Err(e) => {
                tracing::info!("KVM_GET_XSAVE refused ({e}): saving the legacy FPU state only");
                None
            }
        };
        let xcrs = match vcpu.get_xcrs() {
            // A host CPU without XSAVE reports no XCRs, and then refuses
            // KVM_SET_XCRS (EINVAL): there is nothing to restore.
            Ok(x) if x.nr_xcrs == 0 => None,
            Ok(x) => Some(x),
            Err(e) => {
                tracing::info!("KVM_GET_XCRS refused ({e}): not saved");
                None
            }
        };
        Ok(Self {
            // MP state first: reading it also flushes pending APIC events
            // into the state read after it.
            mp_state: vcpu.get_mp_state().map_err(io("KVM_GET_MP_STATE"))?,
            regs: vcpu.get_regs().map_err(io("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(io("KVM_GET_FPU"))?,
            xsave,
            xcrs,
            msrs: read_msrs(vcpu, msr_indices)?,
            lapic: vcpu.get_lapic().map_err(io("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(io("KVM_GET_VCPU_EVENTS"))?,
            debugregs: vcpu.get_debug_regs().map_err(io("KVM_GET_DEBUGREGS"))?,
        })
    }

    /// Writes everything into a fresh vCPU (CPUID already set).
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        let msrs = Msrs::from_entries(&self.msrs)
            .map_err(|e| SnapshotError::Kvm("MSR list", format!("{e:?}")))?;
        let n = vcpu.set_msrs(&msrs).map_err(io("KVM_SET_MSRS"))?;
        if n != self.msrs.len() {
            return Err(SnapshotError::Kvm(
                "KVM_SET_MSRS",
                format!(
                    "MSR {:#x} refused ({n} of {} set)",
                    self.msrs.get(n).map(|m| m.index).unwrap_or(0),
                    self.msrs.len()
                ),
            ));
        }
        vcpu.set_sregs(&self.sregs).map_err(io("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(io("KVM_SET_REGS"))?;
        match &self.xsave {
            // SAFETY: the buffer is a whole kvm_xsave as KVM_GET_XSAVE wrote
            // it in a VM of the same CPUID (the build id pins the layout).
            Some(x) => unsafe { vcpu.set_xsave(x) }.map_err(io("KVM_SET_XSAVE"))?,
            None => vcpu.set_fpu(&self.fpu).map_err(io("KVM_SET_FPU"))?,
        }
        if let Some(x) = self.xcrs.as_ref().filter(|x| x.nr_xcrs > 0) {
            vcpu.set_xcrs(x).map_err(io("KVM_SET_XCRS"))?;
        }
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(io("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(io("KVM_SET_LAPIC"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(io("KVM_SET_MP_STATE"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(io("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.pod(&self.regs);
        w.pod(&self.sregs);
        w.pod(&self.fpu);
        w.u8(u8::from(self.xsave.is_some()));
        if let Some(x) = &self.xsave {
            w.pod(x);
        }
        w.u8(u8::from(self.xcrs.is_some()));
        if let Some(x) = &self.xcrs {
            w.pod(x);
        }
        w.u32(self.msrs.len() as u32);
        for m in &self.msrs {
            w.pod(m);
        }
        w.pod(&self.lapic);
        w.pod(&self.events);
        w.pod(&self.debugregs);
        w.pod(&self.mp_state);
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader::new(b);
        let regs = r.pod("vCPU regs")?;
        let sregs = r.pod("vCPU sregs")?;
        let fpu = r.pod("vCPU FPU")?;
        let xsave = if r.bool()? {
            Some(r.pod("vCPU XSAVE")?)
        } else {
            None
        };
        let xcrs = if r.bool()? {
            Some(r.pod("vCPU XCRs")?)
        } else {
            None
        };
        let n = r.u32()? as usize;
        if n > MAX_MSRS {
            return Err(SnapshotError::Corrupt(format!("{n} MSRs")));
        }
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            msrs.push(r.pod("MSR")?);
        }
        let s = Self {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            msrs,
            lapic: r.pod("LAPIC")?,
            events: r.pod("vCPU events")?,
            debugregs: r.pod("debug registers")?,
            mp_state: r.pod("MP state")?,
        };
        r.finish("vCPU section")?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut s = VcpuState::default();
        s.regs.rip = 0xdead;
        s.msrs.push(kvm_msr_entry {
            index: 0x10,
            data: 77,
            ..Default::default()
        });
        s.xcrs = Some(kvm_xcrs::default());
        let b = s.encode();
        let back = VcpuState::decode(&b).unwrap();
        assert_eq!(back.regs.rip, 0xdead);
        assert_eq!(back.msrs[0].data, 77);
        assert!(back.xsave.is_none() && back.xcrs.is_some());
        assert!(VcpuState::decode(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(VcpuState::decode(&longer).is_err());
    }
}
