//! The guest physical address map and interrupt lines of a hyper-vmm VM.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)
//! 0x0000_6000  PVH hvm_start_info, then the module list (0x6100)
//! 0x0000_7000  Linux boot_params ("zero page", bzImage boot)
//! 0x0000_8000  PVH memory map (up to 8 entries)
//! 0x0000_9000  PML4, PDPT, PD (identity map of the first 1 GiB, bzImage boot)
//! 0x0002_0000  kernel command line (COMMAND_LINE_SIZE = 2048 on x86)
//! 0x0009_fc00  end of low RAM (the EBDA and the BIOS area are reserved)
//! 0x0010_0000  kernel
//! ...          initramfs, as high as possible below the MMIO gap
//! 0xc000_0000  MMIO gap (1 GiB) — virtio-mmio devices from 0xd000_0000
//! 0x1_0000_0000 the rest of RAM, when the guest has more than 3 GiB
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6100;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const PVH_MEMMAP_ADDR: u64 = 0x8000;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux x86 `COMMAND_LINE_SIZE`, including the NUL.
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Each virtio-mmio device gets one page.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

/// The smallest guest we boot (the layout above needs the first 2 MiB)
/// and the largest; the plugin checks them too.
pub use hyper_vmm_config::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// COM1's registers: 0x3f8..=0x3ff.
pub const SERIAL_PORTS: u64 = 8;
/// i8042 command port: 0xfe written here resets the machine (`reboot=k`).
pub const I8042_CMD_PORT: u16 = 0x64;
pub const I8042_DATA_PORT: u16 = 0x60;
/// Debug-exit port (as QEMU's `isa-debug-exit,iobase=0xf4`): a 32-bit or
/// 8-bit write ends the VM with the value as the guest's status. Only
/// honoured when the VMM runs with `--debug-exit` (test guests).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Interrupt lines for virtio-mmio devices, in device order. ISA lines 0
/// (PIT), 1 (keyboard), 2 (cascade), 3/4 (serial), 8 (RTC), 12 (mouse) and
/// 13/14/15 are left alone.
/// The console and up to `MAX_DEVICES` disks, NICs and shares.
pub const VIRTIO_IRQS: [u32; 1 + hyper_vmm_config::MAX_DEVICES] = [5, 6, 7, 9, 10, 11];

/// Guest RAM regions for `memory_mib` of memory: below the MMIO gap, and
/// the remainder above 4 GiB.
pub fn ram_regions(memory_mib: u64) -> Vec<(u64, u64)> {
    let total = memory_mib.saturating_mul(1 << 20);
    if total <= MMIO_GAP_START {
        vec![(0, total)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, total - MMIO_GAP_START)]
    }
}

/// The guest-physical address of virtio-mmio device `index`.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE * index as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(128), vec![(0, 128 << 20)]);
    }

    #[test]
    fn big_guest_skips_the_mmio_gap() {
        let r = ram_regions(4096);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4096u64 << 20) - MMIO_GAP_START)
            ]
        );
        let total: u64 = r.iter().map(|(_, len)| len).sum();
        assert_eq!(total, 4096 << 20);
    }

    #[test]
    fn devices_sit_in_the_gap() {
        assert!(virtio_mmio_addr(0) >= MMIO_GAP_START);
        assert!(virtio_mmio_addr(VIRTIO_IRQS.len()) < MMIO_GAP_END);
    }
}
