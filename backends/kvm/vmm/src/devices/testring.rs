//! Test helper: builds split virtqueues in real guest memory the way a
//! driver does, including broken ones.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

pub struct Ring {
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    pub fn new(base: u64, size: u16) -> Self {
        Self {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    pub fn desc(&self) -> u64 {
        self.base
    }
    pub fn avail(&self) -> u64 {
        self.base + 0x800
    }
    pub fn used(&self) -> u64 {
        self.base + 0x1000
    }

    /// (desc, avail, used, size) for `bring_up`.
    pub fn addrs(&self) -> (u64, u64, u64, u16) {
        (self.desc(), self.avail(), self.used(), self.size)
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc() + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// Adds a chain of (addr, len, device-writable) buffers.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            let last = k + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(mem, i, addr, len, flags, (i + 1) % self.size);
            self.next_desc = (i + 1) % self.size;
        }
        self.publish(mem, head);
        head
    }

    /// A descriptor whose `next` points at itself.
    pub fn add_loop(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u32) {
        let i = self.next_desc;
        self.write_desc(mem, i, addr, len, F_NEXT, i);
        self.next_desc = (i + 1) % self.size;
        self.publish(mem, i);
    }

    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail() + 2)).unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used() + 2)).unwrap()
    }

    pub fn used_len(&self, mem: &GuestMemoryMmap, slot: u16) -> u32 {
        mem.read_obj(GuestAddress(self.used() + 4 + 8 * u64::from(slot) + 4))
            .unwrap()
    }
}
