//! Port I/O, COM1 output and the debug-exit port.

use core::arch::asm;
use core::fmt::Write;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects in this guest.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as above.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as above.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) }
    v
}

pub struct Out;

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // Wait (bounded) for the transmit holding register.
            for _ in 0..1000 {
                if inb(0x3fd) & 0x20 != 0 {
                    break;
                }
            }
            outb(0x3f8, b);
        }
        Ok(())
    }
}

pub fn print(args: core::fmt::Arguments<'_>) {
    let _ = Out.write_fmt(args);
}

pub fn exit(status: u32) -> ! {
    outl(0xf4, status);
    // Without --debug-exit the VMM ignores the port: reset via i8042.
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting is always safe.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    (u64::from(hi) << 32) | u64::from(lo)
}
