//! Guest RAM: private anonymous memory, or (when a vhost-user backend such
//! as virtiofsd must map it too) one sealed memfd mapped `MAP_SHARED`.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory region of {0} bytes does not fit this host's address space")]
    TooBig(u64),
    #[error("memfd for shareable guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the guest memory memfd to {size} bytes: {source}")]
    Size { size: u64, source: std::io::Error },
    #[error("cannot seal the guest memory memfd: {0}")]
    Seal(std::io::Error),
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `regions` ((guest address, length) pairs from
/// [`super::layout::ram_regions`]). With `shared`, the RAM is one memfd
/// mapped `MAP_SHARED` region by region (consecutive file offsets), so the
/// file descriptor can be handed to a vhost-user backend; the memfd is
/// sealed against shrinking and growing, so that backend cannot truncate it
/// under the VMM (a SIGBUS here) nor make it larger.
pub fn guest_memory(regions: &[(u64, u64)], shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let total: u64 = regions.iter().map(|&(_, l)| l).sum();
    let mib = total >> 20;
    let mut ranges = Vec::with_capacity(regions.len());
    let file = if shared {
        Some(Arc::new(sealed_memfd(total)?))
    } else {
        None
    };
    let mut offset = 0u64;
    for &(start, len) in regions {
        let size = usize::try_from(len).map_err(|_| MemoryError::TooBig(len))?;
        let fo = file
            .as_ref()
            .map(|f| FileOffset::from_arc(Arc::clone(f), offset));
        ranges.push((GuestAddress(start), size, fo));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|source| MemoryError::Map { mib, source })
}

fn sealed_memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"hyper-vmm-guest-ram";
    // SAFETY: `name` is a NUL-terminated string; memfd_create only reads it.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this descriptor and nothing else
    // owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Size { size, source })?;
    // SAFETY: F_ADD_SEALS on a descriptor this function owns.
    let r = unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if r < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn shared_memory_is_one_sealed_memfd_at_consecutive_offsets() {
        let regions = [(0u64, 2u64 << 20), (4 << 20, 1 << 20)];
        let mem = guest_memory(&regions, true).unwrap();
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().expect("file backed").start())
            .collect();
        assert_eq!(offsets, vec![0, 2 << 20]);
        let f = mem.iter().next().unwrap().file_offset().unwrap().file();
        assert_eq!(f.metadata().unwrap().len(), 3 << 20);
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        assert!(f.set_len(1 << 20).is_err(), "shrinking is refused");
        // What the guest writes is in the file (MAP_SHARED), where a
        // vhost-user backend mapping it sees it.
        mem.write_obj(0xabcd_u16, GuestAddress((4 << 20) + 8))
            .unwrap();
        let mut b = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut b, (2 << 20) + 8).unwrap();
        assert_eq!(u16::from_le_bytes(b), 0xabcd);
    }

    #[test]
    fn private_memory_has_no_file() {
        let mem = guest_memory(&[(0, 1 << 20)], false).unwrap();
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
    }
}
