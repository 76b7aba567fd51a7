//! vCPU set-up: CPUID, registers for the two boot entries, FPU, MSRs and
//! the local APIC's LINT pins.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::BootEntry;
use super::layout::*;

/// `/dev/kvm` is served by `kvm_pvm` (a software nested hypervisor).
pub use hyper_vmm_config::host_is_pvm;

const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// KVM's supported CPUID, filtered for vCPU `id` of `count`.
pub fn cpuid(kvm: &Kvm, id: u8, count: u8, pvm: bool) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    filter_cpuid(cpuid.as_mut_slice(), id, count, pvm);
    Ok(cpuid)
}

pub fn filter_cpuid(entries: &mut [kvm_bindings::kvm_cpuid_entry2], id: u8, count: u8, pvm: bool) {
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // Initial APIC id and logical processor count.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if pvm {
                    // kvm_pvm's instruction emulator cannot do `lock
                    // cmpxchg16b`, and XSAVE state is not worth the risk.
                    e.ecx &= !(LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE);
                }
            }
            0xb => {
                e.edx = u32::from(id);
            }
            0xd if pvm => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A GDT descriptor: base 0, limit 4 GiB, `access` byte and `flags` nibble.
fn gdt_entry(access: u8, flags: u8) -> u64 {
    0x0000_0000_0000_ffffu64 | (0xfu64 << 48) | (u64::from(access) << 40) | (u64::from(flags) << 52)
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Writes the GDT (and, for 64-bit entry, the identity page tables) and
/// sets the boot vCPU's registers.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: BootEntry,
) -> Result<(), String> {
    let long = matches!(entry, BootEntry::Linux64 { .. });
    // null, code, data, TSS
    let code_flags = if long { 0xa } else { 0xc };
    let gdt = [
        0u64,
        gdt_entry(0x9b, code_flags),
        gdt_entry(0x93, 0xc),
        gdt_entry(0x8b, 0),
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| format!("writing the GDT: {e}"))?;
    }
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(0x08, 0xb, long);
    let data = segment(0x10, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x18,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { rip, start_info } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { rip, boot_params } => {
            // Identity-map the first 1 GiB with 2 MiB pages.
            let w = |v: u64, a: u64| {
                mem.write_obj(v, GuestAddress(a))
                    .map_err(|e| format!("writing page tables: {e}"))
            };
            w(PDPT_ADDR | 0x3, PML4_ADDR)?;
            w(PD_ADDR | 0x3, PDPT_ADDR)?;
            for i in 0..512u64 {
                w((i << 21) | 0x83, PD_ADDR + i * 8)?;
            }
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = boot_params;
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    Ok(())
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// FPU, MSRs and LAPIC LINT0 = ExtINT, LINT1 = NMI (every vCPU).
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), String> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| format!("KVM_SET_FPU: {e}"))?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .map_err(|e| format!("MSR list: {e:?}"))?;
    vcpu.set_msrs(&msrs)
        .map_err(|e| format!("KVM_SET_MSRS: {e}"))?;

    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| format!("KVM_GET_LAPIC: {e}"))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7); // LINT0: ExtINT
    set_lvt(&mut lapic.regs, 0x360, 0x4); // LINT1: NMI
    vcpu.set_lapic(&lapic)
        .map_err(|e| format!("KVM_SET_LAPIC: {e}"))?;
    Ok(())
}

fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn pvm_hides_cx16_and_xsave() {
        let mut e = [leaf(1, LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE | 1), leaf(0xd, 0)];
        e[1].eax = 7;
        filter_cpuid(&mut e, 2, 4, true);
        assert_eq!(e[0].ecx & (LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE), 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ecx & 1, 1, "other features stay");
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].eax, 0);
    }

    #[test]
    fn hardware_kvm_keeps_cx16() {
        let mut e = [leaf(1, LEAF1_ECX_CX16)];
        filter_cpuid(&mut e, 0, 1, false);
        assert_ne!(e[0].ecx & LEAF1_ECX_CX16, 0);
    }

    #[test]
    fn gdt_entries_match_the_usual_encodings() {
        assert_eq!(gdt_entry(0x9b, 0xa), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x9b, 0xc), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x93, 0xc), 0x00cf_9300_0000_ffff);
    }
}
