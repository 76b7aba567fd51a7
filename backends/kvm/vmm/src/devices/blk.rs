//! virtio-blk backed by a host file: read-only disks advertise
//! VIRTIO_BLK_F_RO and refuse writes; GET_ID returns the disk's serial
//! (hyperstart finds the rootfs by it).

use std::fs::File;
use std::io::Seek;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::mmio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::guest_fault;

pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR: u64 = 512;
/// The largest request served; Linux's default is 1280 KiB.
pub const MAX_REQUEST: usize = 4 << 20;
pub use hyper_vmm_config::{valid_serial, SERIAL_LEN};

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    serial: [u8; SERIAL_LEN],
    bounce: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(
        "disk id {0:?} is longer than {SERIAL_LEN} bytes or has characters outside [A-Za-z0-9_-]"
    )]
    BadSerial(String),
    #[error("disk {0}: {1}")]
    Io(String, std::io::Error),
}

impl Block {
    pub fn open(path: &std::path::Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        if !valid_serial(id) {
            return Err(BlockError::BadSerial(id.to_string()));
        }
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Io(name.clone(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| BlockError::Io(name.clone(), e))?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(BlockError::Io(
                name,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file or block device",
                ),
            ));
        }
        // Block devices report length 0 in metadata: ask by seeking.
        let len = (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| BlockError::Io(name.clone(), e))?;
        Ok(Self::from_file(file, read_only, id, len / SECTOR))
    }

    pub fn from_file(file: File, read_only: bool, id: &str, sectors: u64) -> Self {
        let mut serial = [0u8; SERIAL_LEN];
        let n = id.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            file,
            read_only,
            sectors,
            serial,
            bounce: Vec::new(),
        }
    }

    /// Serves one request; returns the number of bytes written to the
    /// guest (data + status) or an error for a chain too broken to answer.
    fn serve(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, String> {
        let mut reader = chain
            .clone()
            .reader(mem)
            .map_err(|e| format!("request: {e}"))?;
        let mut writer = chain.writer(mem).map_err(|e| format!("request: {e}"))?;
        let writable = writer.available_bytes();
        if writable == 0 {
            return Err("request without a writable status byte".into());
        }
        let mut status_w = writer
            .split_at(writable - 1)
            .map_err(|e| format!("request: {e}"))?;
        let mut hdr = [0u8; 16];
        let status = if reader.available_bytes() < hdr.len() {
            guest_fault!("block request header of {} bytes", reader.available_bytes());
            S_IOERR
        } else {
            reader
                .read_exact(&mut hdr)
                .map_err(|e| format!("header: {e}"))?;
            let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&hdr[8..16]);
            let sector = u64::from_le_bytes(s);
            self.request(rtype, sector, &mut reader, &mut writer)
        };
        let data = writer.bytes_written();
        status_w
            .write_all(&[status])
            .map_err(|e| format!("status: {e}"))?;
        Ok((data + 1) as u32)
    }

    fn range_ok(&self, sector: u64, len: usize) -> bool {
        (len as u64).is_multiple_of(SECTOR)
            && len <= MAX_REQUEST
            && sector
                .checked_add(len as u64 / SECTOR)
                .is_some_and(|end| end <= self.sectors)
    }

    fn request(
        &mut self,
        rtype: u32,
        sector: u64,
        reader: &mut virtio_queue::Reader<'_>,
        writer: &mut virtio_queue::Writer<'_>,
    ) -> u8 {
        match rtype {
            T_IN => {
                let len = writer.available_bytes();
                if !self.range_ok(sector, len) {
                    guest_fault!(
                        "block read of {len} bytes at sector {sector} (disk has {})",
                        self.sectors
                    );
                    return S_IOERR;
                }
                self.bounce.resize(len, 0);
                if let Err(e) = self.file.read_exact_at(&mut self.bounce, sector * SECTOR) {
                    tracing::warn!("disk read: {e}");
                    return S_IOERR;
                }
                match writer.write_all(&self.bounce) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            T_OUT => {
                if self.read_only {
                    guest_fault!("write to a read-only disk");
                    return S_IOERR;
                }
                let len = reader.available_bytes();
                if !self.range_ok(sector, len) {
                    guest_fault!("block write of {len} bytes at sector {sector}");
                    return S_IOERR;
                }
                self.bounce.resize(len, 0);
                if reader.read_exact(&mut self.bounce).is_err() {
                    return S_IOERR;
                }
                match self.file.write_all_at(&self.bounce, sector * SECTOR) {
                    Ok(()) => S_OK,
                    Err(e) => {
                        tracing::warn!("disk write: {e}");
                        S_IOERR
                    }
                }
            }
            T_FLUSH => {
                if self.read_only {
                    return S_OK;
                }
                match self.file.sync_data() {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            T_GET_ID => {
                let n = writer.available_bytes().min(SERIAL_LEN);
                match writer.write_all(&self.serial[..n]) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            other => {
                guest_fault!("unsupported block request type {other}");
                S_UNSUPP
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | if self.read_only {
                VIRTIO_BLK_F_RO
            } else {
                VIRTIO_BLK_F_FLUSH
            }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> Vec<u8> {
        // capacity (u64, sectors); the rest is only read with features we
        // do not offer.
        let mut c = self.sectors.to_le_bytes().to_vec();
        c.resize(60, 0);
        c
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, String> {
        let q = queues
            .get_mut(index)
            .filter(|_| index == 0)
            .ok_or_else(|| format!("no queue {index}"))?;
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.serve(chain, mem)?;
            q.add_used(mem, head, len)
                .map_err(|e| format!("used ring: {e}"))?;
            used = true;
        }
        // Don't keep a 4 MiB bounce buffer around between bursts.
        if self.bounce.capacity() > 256 * 1024 {
            self.bounce = Vec::new();
        }
        Ok(used)
    }

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::super::mmio::tests::bring_up;
    use super::super::mmio::MmioTransport;
    use super::super::testring::Ring;
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const DATA: u64 = 0x40000;

    fn disk(ro: bool) -> (MmioTransport<Block>, GuestMemoryMmap, Ring) {
        let (t, mem, q, _) = disk_with(ro, "hyper-rootfs0");
        (t, mem, q)
    }

    fn disk_with(ro: bool, id: &str) -> (MmioTransport<Block>, GuestMemoryMmap, Ring, File) {
        let mut f = tempfile::tempfile().unwrap();
        let mut content = vec![0u8; 8 * 512];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (i / 512) as u8 + 0xa0;
        }
        f.write_all(&content).unwrap();
        let host = f.try_clone().unwrap();
        let blk = Block::from_file(f, ro, id, 8);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(blk, mem.clone(), irq).unwrap();
        let q = Ring::new(0x10000, 16);
        bring_up(&mut t, &[q.addrs()]);
        (t, mem, q, host)
    }

    fn header(mem: &GuestMemoryMmap, at: u64, rtype: u32, sector: u64) {
        mem.write_obj(rtype, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap, at: u64) -> u8 {
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn kick(t: &mut MmioTransport<Block>) {
        t.write(0x50, &0u32.to_le_bytes());
    }

    #[test]
    fn read_sector_through_the_queue() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 3);
        mem.write_obj(0xffu8, GuestAddress(0x30100)).unwrap();
        q.add_chain(
            &mem,
            &[(0x30000, 16, false), (DATA, 512, true), (0x30100, 1, true)],
        );
        kick(&mut t);
        assert_eq!(status(&mem, 0x30100), S_OK);
        let mut buf = [0u8; 512];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa3));
        assert_eq!(q.used_len(&mem, 0), 513);
    }

    #[test]
    fn serial_and_ro_feature() {
        let (mut t, mem, mut q) = disk(true);
        assert_ne!(t.device().features() & VIRTIO_BLK_F_RO, 0);
        header(&mem, 0x30000, T_GET_ID, 0);
        q.add_chain(
            &mem,
            &[(0x30000, 16, false), (DATA, 20, true), (0x30100, 1, true)],
        );
        kick(&mut t);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..13], b"hyper-rootfs0");
        assert_eq!(status(&mem, 0x30100), S_OK);
    }

    #[test]
    fn writes_to_a_read_only_disk_fail() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_OUT, 0);
        q.add_chain(
            &mem,
            &[(0x30000, 16, false), (DATA, 512, false), (0x30100, 1, true)],
        );
        kick(&mut t);
        assert_eq!(status(&mem, 0x30100), S_IOERR);
    }

    #[test]
    fn writes_reach_a_read_write_disk_and_read_back() {
        let (mut t, mem, mut q, host) = disk_with(false, "vol-data");
        assert_eq!(t.device().features() & VIRTIO_BLK_F_RO, 0);
        header(&mem, 0x30000, T_OUT, 2);
        mem.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
        q.add_chain(
            &mem,
            &[
                (0x30000, 16, false),
                (DATA, 1024, false),
                (0x30100, 1, true),
            ],
        );
        kick(&mut t);
        assert_eq!(status(&mem, 0x30100), S_OK);
        let mut on_disk = [0u8; 1536];
        host.read_exact_at(&mut on_disk, 1024).unwrap();
        assert!(on_disk[..1024].iter().all(|&b| b == 0x5a));
        assert!(
            on_disk[1024..].iter().all(|&b| b == 0xa4),
            "sector 4 untouched"
        );
        header(&mem, 0x30200, T_FLUSH, 0);
        q.add_chain(&mem, &[(0x30200, 16, false), (0x30300, 1, true)]);
        header(&mem, 0x30400, T_IN, 3);
        q.add_chain(
            &mem,
            &[
                (0x30400, 16, false),
                (DATA + 0x1000, 512, true),
                (0x30500, 1, true),
            ],
        );
        kick(&mut t);
        assert_eq!(status(&mem, 0x30300), S_OK);
        assert_eq!(status(&mem, 0x30500), S_OK);
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn each_disk_answers_with_its_own_serial() {
        for id in ["hyper-rootfs0", "vol-a", "vol-b_2"] {
            let (mut t, mem, mut q, _) = disk_with(false, id);
            header(&mem, 0x30000, T_GET_ID, 0);
            mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
            q.add_chain(
                &mem,
                &[(0x30000, 16, false), (DATA, 20, true), (0x30100, 1, true)],
            );
            kick(&mut t);
            let mut serial = [0u8; 20];
            mem.read_slice(&mut serial, GuestAddress(DATA)).unwrap();
            let mut want = [0u8; 20];
            want[..id.len()].copy_from_slice(id.as_bytes());
            assert_eq!(serial, want, "{id}");
        }
    }

    #[test]
    fn reads_past_the_end_fail() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 7);
        q.add_chain(
            &mem,
            &[(0x30000, 16, false), (DATA, 1024, true), (0x30100, 1, true)],
        );
        header(&mem, 0x30200, T_IN, u64::MAX);
        q.add_chain(
            &mem,
            &[(0x30200, 16, false), (DATA, 512, true), (0x30300, 1, true)],
        );
        kick(&mut t);
        assert_eq!(status(&mem, 0x30100), S_IOERR);
        assert_eq!(status(&mem, 0x30300), S_IOERR);
        assert!(!t.is_broken());
    }

    #[test]
    fn header_in_a_write_only_descriptor_is_an_error() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 0);
        q.add_chain(
            &mem,
            &[(0x30000, 16, true), (DATA, 512, true), (0x30100, 1, true)],
        );
        kick(&mut t);
        // all writable: the header is unreadable -> IOERR in the last byte
        assert_eq!(status(&mem, 0x30100), S_IOERR);
    }

    #[test]
    fn chain_without_status_byte_breaks_the_device() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 0);
        q.add_chain(&mem, &[(0x30000, 16, false)]);
        kick(&mut t);
        assert!(t.is_broken());
    }

    #[test]
    fn data_outside_guest_memory_breaks_the_device() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 0);
        q.add_chain(
            &mem,
            &[
                (0x30000, 16, false),
                (0xffff_f000, 512, true),
                (0x30100, 1, true),
            ],
        );
        kick(&mut t);
        assert!(t.is_broken());
    }

    #[test]
    fn looping_chain_terminates() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 0);
        q.add_loop(&mem, 0x30000, 16);
        kick(&mut t);
        // All-readable loop: no status byte -> device broken, no hang.
        assert!(t.is_broken());
    }

    #[test]
    fn over_long_chain_is_cut_at_queue_size() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, T_IN, 0);
        // 15 data descriptors + header + status = 17 > queue size 16: the
        // chain wraps onto its own head and is cut after 16 descriptors.
        let mut bufs = vec![(0x30000u64, 16u32, false)];
        bufs.extend((0..15).map(|i| (DATA + 512 * i, 512u32, true)));
        bufs.push((0x30100, 1, true));
        q.add_chain(&mem, &bufs);
        kick(&mut t);
        // No panic; whatever the device made of it, the used ring moved or
        // the device is marked broken.
        assert!(t.is_broken() || q.used_idx(&mem) == 1);
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let (mut t, mem, mut q) = disk(true);
        header(&mem, 0x30000, 99, 0);
        q.add_chain(&mem, &[(0x30000, 16, false), (0x30100, 1, true)]);
        kick(&mut t);
        assert_eq!(status(&mem, 0x30100), S_UNSUPP);
    }

    #[test]
    fn serial_ids_are_validated() {
        assert!(valid_serial("hyper-rootfs0"));
        assert!(!valid_serial(""));
        assert!(!valid_serial("a b"));
        assert!(!valid_serial(&"x".repeat(21)));
    }
}
