//! An Intel MultiProcessor table (spec 1.4) in the EBDA, so a guest without
//! ACPI tables finds its CPUs, the IOAPIC and how ISA interrupts are wired.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::EBDA_START;

pub const MPTABLE_ADDR: u64 = EBDA_START;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC pins (KVM's in-kernel IOAPIC has 24).
const IOAPIC_PINS: u8 = 24;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// The table's bytes for `cpus` CPUs, placed at `base`.
pub fn build(cpus: u8, base: u64) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.push(0u8); // processor
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(if id == 0 { 0x3 } else { 0x1 }); // enabled, BSP
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // I/O interrupt: INT, conforming polarity/trigger, ISA irq -> pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // Local interrupts: ExtINT -> LINT0 of every CPU, NMI -> LINT1.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HYPERVMM");
    table.extend_from_slice(b"KVM-MICROVM ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: config table present
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), String> {
    let bytes = build(cpus, MPTABLE_ADDR);
    if bytes.len() as u64 > 0x10_0000 - MPTABLE_ADDR {
        return Err(format!("MP table for {cpus} CPUs does not fit below 1 MiB"));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| format!("writing the MP table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 64] {
            let t = build(cpus, MPTABLE_ADDR);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(table.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            assert_eq!(
                u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64,
                MPTABLE_ADDR + 16
            );
        }
    }

    #[test]
    fn fits_for_the_largest_guest() {
        // The EBDA and the BIOS area up to 1 MiB are reserved in the e820/PVH
        // map and hold nothing else.
        let len = build(crate::config::MAX_VCPUS, MPTABLE_ADDR).len() as u64;
        assert!(MPTABLE_ADDR + len < 0x10_0000);
    }
}
