//! The snapshot file: a versioned header, length-prefixed sections, and a
//! SHA-256 over everything before it. Guest memory is a separate file
//! (`memory`) whose exact size the header records.
//!
//! ```text
//! "HYVMSNAP" | format u32 | build id (u16 len + bytes) | memory bytes u64
//! | vcpus u32 | device layout (u16 len + bytes) | sections u32
//! | { tag u32 | len u64 | bytes }* | sha256[32]
//! ```
//! All integers little-endian. Every read is bounds-checked: a truncated or
//! altered file is an error, never a panic.

use sha2::{Digest, Sha256};

use super::SnapshotError;

pub const MAGIC: &[u8; 8] = b"HYVMSNAP";
pub const FORMAT_VERSION: u32 = 1;
const SUM_LEN: usize = 32;
/// Sections and strings are bounded so a hostile header cannot make the
/// reader allocate without limit.
pub const MAX_SECTIONS: u32 = 1024;
pub const MAX_SECTION_LEN: u64 = 64 << 20;
const MAX_STR: usize = 4096;

/// What this hyper-vmm build writes and accepts: its version and the sizes
/// of the KVM structures it stores raw (a build with other bindings reads
/// them differently, so it must not accept the file).
pub fn build_id() -> String {
    use std::mem::size_of;
    format!(
        "hyper-vmm {} kvm:{}/{}/{}/{}/{}/{}/{}/{}/{}/{}",
        env!("CARGO_PKG_VERSION"),
        size_of::<kvm_bindings::kvm_regs>(),
        size_of::<kvm_bindings::kvm_sregs>(),
        size_of::<kvm_bindings::kvm_fpu>(),
        size_of::<kvm_bindings::kvm_xsave>(),
        size_of::<kvm_bindings::kvm_lapic_state>(),
        size_of::<kvm_bindings::kvm_vcpu_events>(),
        size_of::<kvm_bindings::kvm_irqchip>(),
        size_of::<kvm_bindings::kvm_pit_state2>(),
        size_of::<kvm_bindings::kvm_clock_data>(),
        size_of::<kvm_bindings::kvm_debugregs>(),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub build_id: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
    /// See [`super::device_layout`].
    pub device_layout: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub tag: u32,
    pub data: Vec<u8>,
}

/// Serializes header and sections and appends the checksum.
pub fn encode(h: &Header, sections: &[Section]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.u32(FORMAT_VERSION);
    w.str(&h.build_id);
    w.u64(h.memory_bytes);
    w.u32(h.vcpus);
    w.str(&h.device_layout);
    w.u32(sections.len() as u32);
    for s in sections {
        w.u32(s.tag);
        w.u64(s.data.len() as u64);
        w.bytes(&s.data);
    }
    let sum = Sha256::digest(&w.0);
    w.bytes(&sum);
    w.0
}

/// Checks magic, version, checksum and structure; returns the header and
/// the sections. Nothing is interpreted beyond the framing.
pub fn decode(file: &[u8]) -> Result<(Header, Vec<Section>), SnapshotError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let mut r = Reader::new(&file[MAGIC.len()..]);
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            want: FORMAT_VERSION,
        });
    }
    if file.len() < MAGIC.len() + 4 + SUM_LEN {
        return Err(SnapshotError::Truncated("checksum"));
    }
    let (body, sum) = file.split_at(file.len() - SUM_LEN);
    if Sha256::digest(body).as_slice() != sum {
        return Err(SnapshotError::Checksum);
    }
    let mut r = Reader::new(&body[MAGIC.len() + 4..]);
    let build_id = r.str("build id")?;
    if build_id != self::build_id() {
        return Err(SnapshotError::Build {
            found: build_id,
            want: self::build_id(),
        });
    }
    let memory_bytes = r.u64()?;
    let vcpus = r.u32()?;
    let device_layout = r.str("device layout")?;
    let n = r.u32()?;
    if n > MAX_SECTIONS {
        return Err(SnapshotError::Corrupt(format!(
            "{n} sections (at most {MAX_SECTIONS})"
        )));
    }
    let mut sections = Vec::new();
    for _ in 0..n {
        let tag = r.u32()?;
        let len = r.u64()?;
        if len > MAX_SECTION_LEN {
            return Err(SnapshotError::Corrupt(format!(
                "section {tag} of {len} bytes (at most {MAX_SECTION_LEN})"
            )));
        }
        let data = r.take(len as usize, "section")?.to_vec();
        sections.push(Section { tag, data });
    }
    if !r.is_empty() {
        return Err(SnapshotError::Corrupt(format!(
            "{} bytes after the last section",
            r.remaining()
        )));
    }
    Ok((
        Header {
            build_id,
            memory_bytes,
            vcpus,
            device_layout,
        },
        sections,
    ))
}

/// Little-endian writer.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Strings longer than the reader accepts are cut (ids are short).
    pub fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(MAX_STR)];
        self.u16(b.len() as u16);
        self.bytes(b);
    }
    /// A length-prefixed byte string.
    pub fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
}

/// Bounds-checked little-endian reader.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        if n > self.buf.len() {
            return Err(SnapshotError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let b = self.take(N, "integer")?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(SnapshotError::Corrupt(format!("boolean byte {v}"))),
        }
    }
    pub fn str(&mut self, what: &'static str) -> Result<String, SnapshotError> {
        let n = self.u16()? as usize;
        if n > MAX_STR {
            return Err(SnapshotError::Corrupt(format!("{what} of {n} bytes")));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| SnapshotError::Corrupt(format!("{what} is not UTF-8")))
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub fn blob(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(SnapshotError::Corrupt(format!(
                "{what} of {n} bytes (at most {max})"
            )));
        }
        self.take(n, what)
    }
    /// The section must have been read to its end.
    pub fn finish(&self, what: &'static str) -> Result<(), SnapshotError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Corrupt(format!(
                "{} unexpected bytes at the end of {what}",
                self.buf.len()
            )))
        }
    }
}

/// KVM structures stored as their raw bytes: plain C structs of integers
/// (and unions of integers), for which every bit pattern is a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` types without pointers, references,
/// `bool`s, enums or padding-sensitive invariants.
pub unsafe trait Pod: Default {}

// SAFETY: each is a #[repr(C)] bindgen struct of integers, integer arrays
// and unions of those; any byte pattern is a valid value.
unsafe impl Pod for kvm_bindings::kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_fpu {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_clock_data {}
// SAFETY: as above.
unsafe impl Pod for kvm_bindings::kvm_msr_entry {}

impl Writer {
    /// A raw KVM structure, length-prefixed.
    pub fn pod<T: Pod>(&mut self, v: &T) {
        // SAFETY: `v` is a live `T`, readable for size_of::<T>() bytes; Pod
        // types are plain integers, so reading them as bytes is defined
        // (bindgen structs here have no padding bytes left uninitialised:
        // they come zeroed from Default or from the kernel).
        let b = unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        };
        self.blob(b);
    }
}

impl Reader<'_> {
    /// A raw KVM structure written by [`Writer::pod`]: the length must be
    /// exactly the structure's.
    pub fn pod<T: Pod>(&mut self, what: &'static str) -> Result<T, SnapshotError> {
        let size = std::mem::size_of::<T>();
        let b = self.blob(size, what)?;
        if b.len() != size {
            return Err(SnapshotError::Corrupt(format!(
                "{what} of {} bytes, want {size}",
                b.len()
            )));
        }
        let mut v = T::default();
        // SAFETY: `b` has exactly size_of::<T>() bytes, `v` is a valid
        // destination of that size, and any bytes are a valid T (Pod).
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), size);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let h = Header {
            build_id: build_id(),
            memory_bytes: 64 << 20,
            vcpus: 2,
            device_layout: "console,blk:ro".into(),
        };
        encode(
            &h,
            &[
                Section {
                    tag: 1,
                    data: vec![1, 2, 3],
                },
                Section {
                    tag: 2,
                    data: vec![0xaa; 100],
                },
            ],
        )
    }

    #[test]
    fn round_trip() {
        let (h, s) = decode(&sample()).unwrap();
        assert_eq!(h.memory_bytes, 64 << 20);
        assert_eq!(h.vcpus, 2);
        assert_eq!(h.device_layout, "console,blk:ro");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].data, vec![0xaa; 100]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let f = sample();
        for n in 0..f.len() {
            let e = decode(&f[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    SnapshotError::NotASnapshot
                        | SnapshotError::Truncated(_)
                        | SnapshotError::Checksum
                ),
                "{n}: {e}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let f = sample();
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[i] ^= 1 << bit;
                assert!(
                    decode(&g).is_err(),
                    "flip of bit {bit} in byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let mut f = sample();
        f[8..12].copy_from_slice(&2u32.to_le_bytes());
        // Even with a checksum that matches, the version decides first.
        let n = f.len() - SUM_LEN;
        let sum = Sha256::digest(&f[..n]);
        f[n..].copy_from_slice(&sum);
        let e = decode(&f).unwrap_err();
        assert!(
            matches!(e, SnapshotError::Version { found: 2, want: 1 }),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn another_build_is_refused() {
        let h = Header {
            build_id: "hyper-vmm 0.0.0 other".into(),
            memory_bytes: 1,
            vcpus: 1,
            device_layout: String::new(),
        };
        let e = decode(&encode(&h, &[])).unwrap_err();
        assert!(matches!(e, SnapshotError::Build { .. }), "{e}");
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        let h = Header {
            build_id: build_id(),
            memory_bytes: 1,
            vcpus: 1,
            device_layout: String::new(),
        };
        let mut f = encode(&h, &[]);
        // Rewrite the section count to a huge value and fix the sum.
        let n = f.len() - SUM_LEN;
        f[n - 4..n].copy_from_slice(&u32::MAX.to_le_bytes());
        let sum = Sha256::digest(&f[..n]);
        f[n..].copy_from_slice(&sum);
        assert!(matches!(decode(&f), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn pod_lengths_must_match() {
        let mut w = Writer::default();
        w.blob(&[0u8; 3]);
        let mut r = Reader::new(&w.0);
        assert!(r.pod::<kvm_bindings::kvm_regs>("regs").is_err());
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1234,
            ..Default::default()
        };
        let mut w = Writer::default();
        w.pod(&regs);
        let back: kvm_bindings::kvm_regs = Reader::new(&w.0).pod("regs").unwrap();
        assert_eq!(back.rip, 0x1234);
    }
}
