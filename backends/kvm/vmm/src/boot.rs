//! Loading the kernel, initramfs and command line into guest memory, and
//! writing what the boot protocol hands over: PVH `hvm_start_info` with its
//! memory map and module list (ELF vmlinux), or Linux `boot_params` with an
//! e820 table (bzImage, 64-bit entry).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use hyper_vmm_config::{detect_kernel, KernelError, KernelFormat};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// `boot_params.e820_table` has 128 slots.
const E820_MAX: usize = 128;
const XLF_KERNEL_64: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a kernel: neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    NotAKernel(String),
    #[error("ELF {0} is not a kernel: its entry point is not in guest memory above 1 MiB (a program rather than a vmlinux?)")]
    ElfEntryNotKernel(String),
    #[error("ELF kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y, or boot the bzImage")]
    NoPvhEntry(String),
    #[error("bzImage {0} has no 64-bit entry point (boot protocol < 2.12 or XLF_KERNEL_64 clear)")]
    No64BitEntry(String),
    #[error("cannot load kernel {path}: {source}")]
    Load {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x}): give the VM more memory")]
    InitrdTooBig {
        path: String,
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("kernel command line is {0} bytes; the limit is {max} including the final NUL", max = CMDLINE_MAX)]
    CmdlineTooLong(usize),
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("guest memory is too small for the boot layout: {0}")]
    Memory(String),
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh { rip: u64, start_info: u64 },
    /// 64-bit long mode on an identity map, `rsi` = `boot_params`.
    Linux64 { rip: u64, boot_params: u64 },
}

/// The kernel's format (the check the plugin makes too, in
/// hyper-vmm-config), from the start of `file`; leaves it at offset 0.
fn detect(file: &mut File, path: &str) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_string(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let format = detect_kernel(file, path).map_err(|e| match e {
        KernelError::Read { source, .. } => read_err(source),
        KernelError::NotAKernel(p) => BootError::NotAKernel(p),
    })?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    Ok(format)
}

/// The guest's RAM as the boot protocols describe it.
pub fn memory_map(regions: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for &(start, len) in regions {
        if start == 0 {
            map.push((0, EBDA_START.min(len), E820_RAM));
            if len > EBDA_START {
                map.push((EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED));
            }
            if len > HIMEM_START {
                map.push((HIMEM_START, len - HIMEM_START, E820_RAM));
            }
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &str,
) -> Result<(), BootError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|e| BootError::Memory(format!("{what} at {addr:#x}: {e}")))
}

/// Loads everything and returns where to start. `regions` is the RAM layout
/// from [`ram_regions`].
pub fn load(
    mem: &GuestMemoryMmap,
    regions: &[(u64, u64)],
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let kpath = kernel.display().to_string();
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len() + 1));
    }
    let low_end = regions
        .first()
        .map(|&(_, len)| len)
        .ok_or_else(|| BootError::Memory("no RAM".into()))?;
    if low_end < 2 << 20 {
        return Err(BootError::Memory(format!("{low_end} bytes of low RAM")));
    }
    let mut kfile = File::open(kernel).map_err(|source| BootError::Read {
        what: "kernel",
        path: kpath.clone(),
        source,
    })?;
    let format = detect(&mut kfile, &kpath)?;
    let load_err = |source| BootError::Load {
        path: kpath.clone(),
        source,
    };
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
            .map_err(|source| match source {
                linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::InvalidEntryAddress,
                ) => BootError::ElfEntryNotKernel(kpath.clone()),
                source => load_err(source),
            })?,
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
    };
    let kernel_end = loaded.kernel_end;

    let mut cbytes = cmdline.as_bytes().to_vec();
    cbytes.push(0);
    mem.write_slice(&cbytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| BootError::Memory(format!("command line: {e}")))?;

    // The initramfs goes as high as it can below the MMIO gap (and below
    // the kernel's initrd_addr_max for bzImage).
    let mut initrd_limit = low_end.min(MMIO_GAP_START);
    if let Some(hdr) = loaded.setup_header {
        if hdr.initrd_addr_max != 0 {
            initrd_limit = initrd_limit.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let initrd_loc = match initrd {
        None => None,
        Some(path) => {
            let ipath = path.display().to_string();
            let read_err = |source| BootError::Read {
                what: "initramfs",
                path: ipath.clone(),
                source,
            };
            let mut f = File::open(path).map_err(read_err)?;
            let size = f.metadata().map_err(read_err)?.len();
            let too_big = || BootError::InitrdTooBig {
                path: ipath.clone(),
                size,
                limit: initrd_limit,
                kernel_end,
            };
            let addr = initrd_limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
            if addr < kernel_end || addr < HIMEM_START {
                return Err(too_big());
            }
            let count = usize::try_from(size).map_err(|_| too_big())?;
            mem.read_exact_volatile_from(GuestAddress(addr), &mut f, count)
                .map_err(|e| BootError::Memory(format!("initramfs: {e}")))?;
            Some((addr, size))
        }
    };

    let map = memory_map(regions);
    match format {
        KernelFormat::Elf => {
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(BootError::NoPvhEntry(kpath));
            };
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_ADDR,
                memmap_paddr: PVH_MEMMAP_ADDR,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            if let Some((addr, size)) = initrd_loc {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_ADDR;
                let module = hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                };
                write(mem, module, PVH_MODLIST_ADDR, "PVH module list")?;
            }
            for (i, &(addr, size, type_)) in map.iter().enumerate() {
                let entry = hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                };
                let at =
                    PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
                write(mem, entry, at, "PVH memory map")?;
            }
            write(mem, info, PVH_INFO_ADDR, "PVH start info")?;
            Ok(BootEntry::Pvh {
                rip: entry.0,
                start_info: PVH_INFO_ADDR,
            })
        }
        KernelFormat::BzImage => {
            let Some(mut hdr) = loaded.setup_header else {
                return Err(BootError::NotAKernel(kpath));
            };
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(kpath));
            }
            hdr.type_of_loader = 0xff;
            hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            hdr.cmdline_size = cbytes.len() as u32;
            if let Some((addr, size)) = initrd_loc {
                hdr.ramdisk_image = addr as u32;
                hdr.ramdisk_size = size as u32;
            }
            let mut params = boot_params {
                hdr,
                ..Default::default()
            };
            for (i, &(addr, size, type_)) in map.iter().take(E820_MAX).enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr,
                    size,
                    r#type: type_,
                };
            }
            params.e820_entries = map.len().min(E820_MAX) as u8;
            write(mem, params, ZERO_PAGE_ADDR, "boot_params")?;
            Ok(BootEntry::Linux64 {
                rip: loaded.kernel_load.0 + 0x200,
                boot_params: ZERO_PAGE_ADDR,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn guest(mib: u64) -> (GuestMemoryMmap, Vec<(u64, u64)>) {
        let regions = ram_regions(mib);
        let ranges: Vec<_> = regions
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l as usize))
            .collect();
        (GuestMemoryMmap::from_ranges(&ranges).unwrap(), regions)
    }

    #[test]
    fn memory_map_reserves_the_bios_area() {
        let map = memory_map(&ram_regions(64));
        assert_eq!(
            map,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn a_text_file_is_not_a_kernel() {
        let (mem, regions) = guest(16);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"#!/bin/sh\necho hello\n").unwrap();
        let err = load(&mem, &regions, f.path(), None, "").unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)), "{err}");
        assert!(err.to_string().contains("is not a kernel"));
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let (mem, regions) = guest(16);
        let err = load(&mem, &regions, Path::new("/nonexistent/vmlinux"), None, "").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn an_overlong_cmdline_is_refused() {
        let (mem, regions) = guest(16);
        let long = "x".repeat(CMDLINE_MAX);
        let err = load(&mem, &regions, Path::new("/dev/null"), None, &long).unwrap_err();
        assert!(matches!(err, BootError::CmdlineTooLong(_)), "{err}");
    }

    #[test]
    fn a_truncated_elf_is_an_error_not_a_panic() {
        let (mem, regions) = guest(16);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01garbage").unwrap();
        let err = load(&mem, &regions, f.path(), None, "").unwrap_err();
        assert!(matches!(err, BootError::Load { .. }), "{err}");
    }
}
