//! hyper-testguest: a freestanding guest that checks what hyper-vmm handed
//! it (PVH start info or Linux boot_params, command line, memory map,
//! initramfs), drives the virtio-mmio console and block devices through
//! real split virtqueues, and stops with a status on the debug-exit port
//! (0xf4). All results are printed on COM1 as `tg: ok …` / `tg: FAIL …`.
//!
//! Command-line switches (`tg.*`):
//! * `tg.quick`: print one line and stop (boot-time benchmark);
//! * `tg.count`: print `tg: count N` with N = 0, 1, 2, … forever;
//! * `tg.mem_mib=N`: check that the memory map adds up to N MiB;
//! * `tg.cpus=N`: check the MP table and CPUID report N CPUs;
//! * `tg.initrd=LEN`: check the initramfs (LEN bytes, starts with HYPERTG-INITRD);
//! * `tg.echo`: echo one line received on the virtio console, prefixed `echo:`;
//! * `tg.disk_serial=ID`, `tg.sector=N`: check the disk's serial, that it is
//!   read-only, and that sector N starts with `HYPERTG-SECTOR-N`;
//! * a virtio-net device (when there is one): send a frame through the TX
//!   queue and wait for one through RX (see `virtio::net_checks`);
//! * `tg.netflood=N` (`tg.netflood_len=L`, 60..=1514): instead of receiving,
//!   send N frames of L bytes as fast as the device takes them, with no
//!   receive buffer posted;
//! * `tg.netsink=N`: instead of looking for one frame, receive N frames;
//! * a virtio-fs device (when there is one): `tg.fs_tag=TAG`, FUSE
//!   requests through the request queue (see `virtio::fs_checks`);
//!   `tg.fs_ro`: the share is read-only;
//! * `tg.hostile`: write garbage to every I/O port and device register;
//! * `tg.halt`: print one line and halt with interrupts off, as Linux's
//!   poweroff does without ACPI (the VMM must notice and exit).
//!
//! Exit status: the number of failed checks (0 = all passed); 0xff on panic.

#![no_std]
#![no_main]

mod io;
mod virtio;

use core::arch::global_asm;
use io::{exit, print, Out};

global_asm!(
    r#"
    .section .boot32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    movl %ebx, %edi
    movw $0x3f8, %dx
    movb $0x50, %al
    outb %al, %dx
    movl $(boot_pdpt + 3), boot_pml4
    movl $(boot_pd + 3), boot_pdpt
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_long
    .code64
pvh_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    movl %edi, %esi
    xorl %edi, %edi
    call guest_main
2:
    hlt
    jmp 2b
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .boot64, "ax"
    .code64
    .globl linux64_start
linux64_start:
    cli
    movq %rsi, %r12
    movw $0x3f8, %dx
    movb $0x4c, %al
    outb %al, %dx
    movabsq $boot_stack_top, %rsp
    movq %r12, %rsi
    movl $1, %edi
    call guest_main
3:
    hlt
    jmp 3b

    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_start32

    .section .bss
    .balign 4096
    .globl boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd: .skip 4096
    .balign 16
boot_stack: .skip 65536
boot_stack_top:
"#,
    options(att_syntax)
);

#[repr(C, align(4096))]
struct PageTable([u64; 512]);

static mut PML4: PageTable = PageTable([0; 512]);
static mut PDPT: PageTable = PageTable([0; 512]);
static mut PD: [PageTable; 4] = [const { PageTable([0; 512]) }; 4];

/// Identity-maps 4 GiB (so the MMIO gap is reachable) and switches CR3.
fn map_4g() {
    // SAFETY: single-threaded guest; the tables are only written here, and
    // the new map covers all the old one did (the first GiB).
    unsafe {
        let pml4 = &raw mut PML4;
        let pdpt = &raw mut PDPT;
        let pd = &raw mut PD;
        for g in 0..4 {
            for i in 0..512 {
                (*pd)[g].0[i] = (((g as u64) << 30) | ((i as u64) << 21)) | 0x83;
            }
            (*pdpt).0[g] = (&raw const (*pd)[g]) as u64 | 0x3;
        }
        (*pml4).0[0] = pdpt as u64 | 0x3;
        core::arch::asm!("mov cr3, {}", in(reg) pml4 as u64);
    }
}

pub struct Checks {
    failed: u32,
}

impl Checks {
    pub fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            print(format_args!("tg: ok {name}\n"));
        } else {
            self.failed += 1;
            print(format_args!("tg: FAIL {name}: {detail}\n"));
        }
    }
}

/// A NUL-terminated string at a guest-physical address, at most 2048 bytes.
fn cstr(addr: u64) -> &'static [u8] {
    if addr == 0 {
        return &[];
    }
    let p = addr as *const u8;
    let mut n = 0;
    // SAFETY: the VMM put the command line in identity-mapped RAM; the
    // scan is bounded.
    while n < 2048 && unsafe { p.add(n).read_volatile() } != 0 {
        n += 1;
    }
    // SAFETY: `n` bytes were just read from that memory.
    unsafe { core::slice::from_raw_parts(p, n) }
}

pub fn arg<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    cmdline.split(|&b| b == b' ').find_map(|w| {
        if w == key.as_bytes() {
            Some(&w[w.len()..])
        } else if w.len() > key.len() && w.starts_with(key.as_bytes()) && w[key.len()] == b'=' {
            Some(&w[key.len() + 1..])
        } else {
            None
        }
    })
}

pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x") {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses of boot structures the VMM wrote in
    // identity-mapped RAM below 1 MiB.
    unsafe { (addr as *const T).read_unaligned() }
}

struct Boot {
    cmdline: &'static [u8],
    ram: u64,
    reserved: u64,
    entries: u32,
    low_ram_ok: bool,
    high_ram_ok: bool,
    initrd: Option<(u64, u64)>,
    proto_ok: bool,
}

fn from_pvh(info: u64) -> Boot {
    let magic: u32 = rd(info);
    let nr_modules: u32 = rd(info + 12);
    let modlist: u64 = rd(info + 16);
    let cmdline: u64 = rd(info + 24);
    let memmap: u64 = rd(info + 40);
    let entries: u32 = rd(info + 48);
    let mut b = Boot {
        cmdline: cstr(cmdline),
        ram: 0,
        reserved: 0,
        entries,
        low_ram_ok: false,
        high_ram_ok: false,
        initrd: None,
        proto_ok: magic == 0x336e_c578,
    };
    for i in 0..entries.min(64) as u64 {
        let e = memmap + i * 24;
        add_region(&mut b, rd(e), rd(e + 8), rd(e + 16));
    }
    if nr_modules >= 1 && modlist != 0 {
        b.initrd = Some((rd(modlist), rd(modlist + 8)));
    }
    b
}

fn from_linux(bp: u64) -> Boot {
    let entries: u8 = rd(bp + 0x1e8);
    let loader: u8 = rd(bp + 0x210);
    let cmd: u32 = rd(bp + 0x228);
    let rd_image: u32 = rd(bp + 0x218);
    let rd_size: u32 = rd(bp + 0x21c);
    let magic: u32 = rd(bp + 0x202);
    let mut b = Boot {
        cmdline: cstr(u64::from(cmd)),
        ram: 0,
        reserved: 0,
        entries: entries.into(),
        low_ram_ok: false,
        high_ram_ok: false,
        initrd: None,
        proto_ok: loader == 0xff && magic == 0x5372_6448,
    };
    for i in 0..u64::from(entries.min(128)) {
        let e = bp + 0x2d0 + i * 20;
        add_region(&mut b, rd(e), rd(e + 8), rd(e + 16));
    }
    if rd_size != 0 {
        b.initrd = Some((rd_image.into(), rd_size.into()));
    }
    b
}

fn add_region(b: &mut Boot, addr: u64, size: u64, kind: u32) {
    if kind == 1 {
        b.ram += size;
        if addr == 0 {
            b.low_ram_ok = size >= 0x9_0000;
        }
        if addr == 0x10_0000 {
            b.high_ram_ok = true;
        }
    } else {
        b.reserved += size;
    }
}

#[no_mangle]
extern "C" fn guest_main(proto: u64, info: u64) -> ! {
    print(format_args!(
        "\ntg: start entry={}\n",
        if proto == 0 { "pvh" } else { "linux64" }
    ));
    let boot = if proto == 0 {
        from_pvh(info)
    } else {
        from_linux(info)
    };
    if arg(boot.cmdline, "tg.halt").is_some() {
        print(format_args!("tg: halting\n"));
        loop {
            // SAFETY: interrupts off and halt: this CPU stops for good,
            // which is the point.
            unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
        }
    }
    if arg(boot.cmdline, "tg.count").is_some() {
        // Counts forever on the serial port (snapshot tests: a restored
        // guest must go on from where it was saved, not start again).
        let mut n: u64 = 0;
        loop {
            print(format_args!("tg: count {n}\n"));
            n += 1;
            // A register-only delay: no PAUSE (under kvm_pvm each one is
            // an exit) and no memory traffic.
            // SAFETY: only counts a scratch register down.
            unsafe {
                core::arch::asm!(
                    "2:",
                    "dec {r}",
                    "jnz 2b",
                    r = inout(reg) 100_000u64 => _,
                    options(nomem, nostack)
                )
            }
        }
    }
    if arg(boot.cmdline, "tg.quick").is_some() {
        print(format_args!("tg: quick\n"));
        exit(0);
    }
    map_4g();
    let mut c = Checks { failed: 0 };
    c.check(
        "boot-protocol",
        boot.proto_ok,
        format_args!("bad magic / loader id"),
    );
    c.check(
        "cmdline",
        arg(boot.cmdline, "tg.hello").is_some(),
        format_args!("{:?}", core::str::from_utf8(boot.cmdline)),
    );
    print(format_args!(
        "tg: cmdline {}\n",
        core::str::from_utf8(boot.cmdline).unwrap_or("?")
    ));
    c.check(
        "memory-map",
        boot.low_ram_ok && boot.high_ram_ok && boot.entries >= 2,
        format_args!(
            "entries={} low={} high={}",
            boot.entries, boot.low_ram_ok, boot.high_ram_ok
        ),
    );
    if let Some(mib) = arg(boot.cmdline, "tg.mem_mib").and_then(parse_u64) {
        let total = boot.ram + boot.reserved;
        c.check(
            "memory-size",
            total == mib << 20,
            format_args!("map covers {total:#x}, expected {:#x}", mib << 20),
        );
    }
    if let Some(len) = arg(boot.cmdline, "tg.initrd").and_then(parse_u64) {
        let ok = match boot.initrd {
            Some((addr, size)) => {
                size == len && addr % 4096 == 0 && {
                    let head = cstr(addr);
                    head.starts_with(b"HYPERTG-INITRD")
                }
            }
            None => false,
        };
        c.check("initrd", ok, format_args!("{:?}", boot.initrd));
    }

    if let Some(cpus) = arg(boot.cmdline, "tg.cpus").and_then(parse_u64) {
        let (found, ok_sum) = mp_cpus();
        c.check(
            "mptable",
            ok_sum && found == cpus,
            format_args!("{found} processors (checksums ok: {ok_sum}), expected {cpus}"),
        );
        // CPUID.1:EBX[23:16], logical processors.
        let ebx = core::arch::x86_64::__cpuid(1).ebx;
        c.check(
            "cpuid-count",
            u64::from((ebx >> 16) & 0xff) == cpus,
            format_args!("CPUID.1 EBX = {ebx:#x}"),
        );
    }

    let devices = virtio::find_devices(boot.cmdline);
    print(format_args!(
        "tg: {} virtio-mmio devices on the command line\n",
        devices.len()
    ));
    if arg(boot.cmdline, "tg.hostile").is_some() {
        hostile(&devices);
        print(format_args!("tg: hostile done\n"));
        exit(0);
    }
    for &(base, _) in devices.iter() {
        match virtio::device_id(base) {
            Some(3) => virtio::console_checks(base, boot.cmdline, &mut c),
            Some(2) => virtio::block_checks(base, boot.cmdline, &mut c),
            Some(1) => virtio::net_checks(base, boot.cmdline, &mut c),
            Some(26) => virtio::fs_checks(base, boot.cmdline, &mut c),
            // An empty transport (QEMU's microvm has a row of them).
            Some(0) => {}
            other => c.check("virtio-probe", false, format_args!("{base:#x}: {other:?}")),
        }
    }
    print(format_args!("tg: done failed={}\n", c.failed));
    exit(c.failed.min(0xfe));
}

/// Processor entries of the MP table (floating pointer in the EBDA), and
/// whether both checksums hold.
fn mp_cpus() -> (u64, bool) {
    let fp = 0x9fc00u64;
    let sum = |at: u64, len: u64| (0..len).fold(0u8, |a, i| a.wrapping_add(rd::<u8>(at + i)));
    if rd::<[u8; 4]>(fp) != *b"_MP_" {
        return (0, false);
    }
    let table = u64::from(rd::<u32>(fp + 4));
    if table == 0 || table > 0xf_ffff || rd::<[u8; 4]>(table) != *b"PCMP" {
        return (0, false);
    }
    let len = u64::from(rd::<u16>(table + 4)).min(0x1000);
    let count = rd::<u16>(table + 34);
    let mut at = table + 44;
    let mut cpus = 0;
    for _ in 0..count {
        if at >= table + len {
            break;
        }
        let kind: u8 = rd(at);
        if kind == 0 {
            cpus += 1;
            at += 20;
        } else {
            at += 8;
        }
    }
    (cpus, sum(fp, 16) == 0 && sum(table, len) == 0)
}

/// Garbage everywhere the guest can reach, except the two ports that
/// would end the VM early (i8042 reset, debug exit).
fn hostile(devices: &virtio::Devices) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for port in 0..=0xffffu32 {
        let port = port as u16;
        if port == 0x64 || port == 0xf4 || (0x3f8..=0x3ff).contains(&port) {
            continue;
        }
        let v = next();
        io::outb(port, v as u8);
        let _ = io::inb(port);
        if port.is_multiple_of(4) {
            io::outl(port, v as u32);
        }
    }
    print(format_args!("tg: hostile ports done\n"));
    // Every register of every device page (and the pages after them),
    // then queues full of nonsense.
    let pages = devices.iter().map(|&(b, _)| b).max().unwrap_or(0xd000_0000) + 0x4000;
    let mut page = 0xd000_0000u64;
    while page < pages {
        for off in (0..0x200u64).step_by(4) {
            let v = next();
            // SAFETY: device MMIO (or unmapped) addresses; every access
            // exits to the VMM, which is what is being tested.
            unsafe {
                core::ptr::write_volatile((page + off) as *mut u32, v as u32);
                let _ = core::ptr::read_volatile((page + off) as *const u32);
                core::ptr::write_volatile((page + off) as *mut u8, (v >> 32) as u8);
                let _ = core::ptr::read_volatile((page + off) as *const u64);
            }
        }
        page += 0x1000;
    }
    for &(base, _) in devices.iter() {
        virtio::garbage_queues(base, &mut next);
    }
    // An unmapped address in the MMIO gap, and one far above RAM.
    for addr in [0xc000_0000u64, 0xe000_0000, 0xfebf_f000] {
        // SAFETY: see above.
        unsafe {
            core::ptr::write_volatile(addr as *mut u32, 0xdead_beef);
            let _ = core::ptr::read_volatile(addr as *const u32);
        }
    }
    print(format_args!("tg: hostile mmio done\n"));
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = core::fmt::write(&mut Out, format_args!("tg: PANIC {info}\n"));
    exit(0xff)
}
