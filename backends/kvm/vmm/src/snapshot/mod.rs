//! hyper-vmm snapshots: what a paused VM needs to carry on in another
//! process. A snapshot directory holds `state` (see [`format`]: versioned
//! header, vCPU / VM / device sections, SHA-256) and `memory` (guest RAM,
//! the regions one after the other). [`load`] checks all of it against the
//! configuration of the VM about to be built before anything is created;
//! restore then maps `memory` copy-on-write (`MAP_PRIVATE`), never copying
//! it.

pub mod devices;
pub mod format;
pub mod irqchip;
pub mod vcpu;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::devices::DevicesState;
use self::format::{Header, Section};
use self::irqchip::VmState;
use self::vcpu::VcpuState;
use super::config::VmmConfig;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// The state file is a few hundred KiB at most; anything larger is not ours.
const MAX_STATE_FILE: u64 = 256 << 20;

const TAG_VCPU: u32 = 1;
const TAG_VM: u32 = 2;
const TAG_DEVICES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a hyper-vmm snapshot (bad magic)")]
    NotASnapshot,
    #[error("snapshot format version {found}, this hyper-vmm reads version {want}: rebuild the template")]
    Version { found: u32, want: u32 },
    #[error("snapshot written by {found:?}, this is {want:?}: rebuild the template")]
    Build { found: String, want: String },
    #[error("snapshot truncated (in the {0})")]
    Truncated(&'static str),
    #[error("snapshot checksum mismatch: the state file was altered or damaged")]
    Checksum,
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot does not fit this VM: {0}")]
    Mismatch(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Kvm(&'static str, String),
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
}

/// The devices a VM has, as a snapshot records them: a snapshot restores
/// only into a VM with the same layout (disk paths, NIC taps, MACs and
/// MTUs may differ: they are the clone's own).
pub fn device_layout(cfg: &VmmConfig) -> String {
    let mut parts = vec!["console".to_string()];
    for d in &cfg.disks {
        parts.push(format!(
            "blk:{}:{}",
            d.id,
            if d.read_only { "ro" } else { "rw" }
        ));
    }
    // A NIC's MAC and MTU are the clone's own (the guest re-reads them
    // when it re-probes its devices after a restore).
    parts.extend(cfg.nets.iter().map(|_| "net".to_string()));
    for s in &cfg.shares {
        parts.push(format!("fs:{}", s.tag));
    }
    parts.join(",")
}

/// Everything but guest memory.
pub struct Snapshot {
    pub header: Header,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DevicesState,
}

impl Snapshot {
    fn encode(&self) -> Vec<u8> {
        let mut sections: Vec<Section> = self
            .vcpus
            .iter()
            .map(|v| Section {
                tag: TAG_VCPU,
                data: v.encode(),
            })
            .collect();
        sections.push(Section {
            tag: TAG_VM,
            data: self.vm.encode(),
        });
        sections.push(Section {
            tag: TAG_DEVICES,
            data: self.devices.encode(),
        });
        format::encode(&self.header, &sections)
    }

    /// Parses and checks a whole state file.
    pub fn decode(file: &[u8]) -> Result<Self, SnapshotError> {
        let (header, sections) = format::decode(file)?;
        let mut vcpus = Vec::new();
        let mut vm = None;
        let mut devices = None;
        for s in &sections {
            match s.tag {
                TAG_VCPU if vm.is_none() => vcpus.push(VcpuState::decode(&s.data)?),
                TAG_VM if vm.is_none() && devices.is_none() => vm = Some(VmState::decode(&s.data)?),
                TAG_DEVICES if vm.is_some() && devices.is_none() => {
                    devices = Some(DevicesState::decode(&s.data)?)
                }
                t => {
                    return Err(SnapshotError::Corrupt(format!(
                        "unexpected section {t} here"
                    )))
                }
            }
        }
        let (Some(vm), Some(devices)) = (vm, devices) else {
            return Err(SnapshotError::Corrupt(
                "VM or devices section missing".into(),
            ));
        };
        if vcpus.len() != header.vcpus as usize {
            return Err(SnapshotError::Corrupt(format!(
                "header says {} vCPUs, {} saved",
                header.vcpus,
                vcpus.len()
            )));
        }
        Ok(Self {
            header,
            vcpus,
            vm,
            devices,
        })
    }

    /// Does this snapshot belong to a VM configured as `cfg`?
    pub fn check_fits(&self, cfg: &VmmConfig, memory_bytes: u64) -> Result<(), SnapshotError> {
        let h = &self.header;
        if h.memory_bytes != memory_bytes {
            return Err(SnapshotError::Mismatch(format!(
                "{} MiB of guest memory saved, this VM has {} MiB",
                h.memory_bytes >> 20,
                memory_bytes >> 20
            )));
        }
        if h.vcpus != u32::from(cfg.vcpus) {
            return Err(SnapshotError::Mismatch(format!(
                "{} vCPUs saved, this VM has {}",
                h.vcpus, cfg.vcpus
            )));
        }
        let layout = device_layout(cfg);
        if h.device_layout != layout {
            return Err(SnapshotError::Mismatch(format!(
                "devices {:?} saved, this VM has {layout:?}",
                h.device_layout
            )));
        }
        if self.devices.transports.len() != 1 + cfg.disks.len() + cfg.nets.len() {
            return Err(SnapshotError::Corrupt(format!(
                "{} virtio transports saved for {layout:?}",
                self.devices.transports.len()
            )));
        }
        Ok(())
    }
}

/// Writes `snap` and guest memory into `dir` (which must exist): memory
/// first, the state file last and synced, so a dir with a valid state file
/// has its memory complete.
pub fn save(dir: &Path, snap: &Snapshot, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    let mpath = dir.join(MEMORY_FILE);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| SnapshotError::Io(p.clone(), e)
    };
    let mut f = File::create(&mpath).map_err(io(&mpath))?;
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| SnapshotError::Kvm("guest memory", e.to_string()))?;
        let len = usize::try_from(region.len())
            .map_err(|_| SnapshotError::Kvm("guest memory", "region too large".into()))?;
        // SAFETY: `host..host+len` is a live mapping owned by `mem`; every
        // vCPU is paused, so nothing writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        f.write_all(bytes).map_err(io(&mpath))?;
    }
    f.sync_all().map_err(io(&mpath))?;
    let spath = dir.join(STATE_FILE);
    let mut s = File::create(&spath).map_err(io(&spath))?;
    s.write_all(&snap.encode()).map_err(io(&spath))?;
    s.sync_all().map_err(io(&spath))?;
    Ok(())
}

/// Reads and checks `dir`'s snapshot against `cfg` (whose guest memory is
/// `regions`): the whole state file, and the memory file's exact size.
/// Returns the state and the opened memory file. Nothing is touched.
pub fn load(
    dir: &Path,
    cfg: &VmmConfig,
    regions: &[(u64, u64)],
) -> Result<(Snapshot, File), SnapshotError> {
    if !cfg.shares.is_empty() {
        return Err(SnapshotError::Unsupported(
            "virtio-fs shares (virtiofsd's state is not ours to restore)".into(),
        ));
    }
    let spath = dir.join(STATE_FILE);
    let f = File::open(&spath).map_err(|e| SnapshotError::Io(spath.clone(), e))?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SnapshotError::Io(spath.clone(), e))?;
    if buf.len() as u64 > MAX_STATE_FILE {
        return Err(SnapshotError::Corrupt(format!(
            "{} is larger than {MAX_STATE_FILE} bytes",
            spath.display()
        )));
    }
    let snap = Snapshot::decode(&buf)?;
    let total: u64 = regions.iter().map(|&(_, l)| l).sum();
    snap.check_fits(cfg, total)?;
    let mpath = dir.join(MEMORY_FILE);
    let m = File::open(&mpath).map_err(|e| SnapshotError::Io(mpath.clone(), e))?;
    let len = m
        .metadata()
        .map_err(|e| SnapshotError::Io(mpath.clone(), e))?
        .len();
    if len != total {
        return Err(SnapshotError::Mismatch(format!(
            "{} has {len} bytes, the snapshot says {total}",
            mpath.display()
        )));
    }
    Ok((snap, m))
}

/// [`load`] for `cfg`'s own memory layout, keeping nothing: what
/// `hyper-vmm --check-snapshot` answers the plugin before a clone starts.
pub fn check(dir: &Path, cfg: &VmmConfig) -> Result<(), SnapshotError> {
    let regions = super::layout::ram_regions(cfg.memory_mib);
    load(dir, cfg, &regions).map(|_| ())
}

/// Guest memory mapped copy-on-write from the snapshot's memory file: pages
/// are read from the file (shared with every other clone in the page
/// cache) until the guest writes them.
pub fn private_memory(
    file: File,
    regions: &[(u64, u64)],
) -> Result<GuestMemoryMmap, SnapshotError> {
    use std::sync::Arc;
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};
    let file = Arc::new(file);
    let mut out = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for &(start, len) in regions {
        let size = usize::try_from(len)
            .map_err(|_| SnapshotError::Mismatch(format!("region of {len} bytes")))?;
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(Arc::clone(&file), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Kvm("mapping the memory file", e.to_string()))?;
        let r = GuestRegionMmap::new(region, GuestAddress(start)).ok_or_else(|| {
            SnapshotError::Kvm("mapping the memory file", "region overflows".into())
        })?;
        out.push(r);
        offset += len;
    }
    GuestMemoryMmap::from_regions(out)
        .map_err(|e| SnapshotError::Kvm("guest memory", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn private_memory_is_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("memory");
        let mut content = vec![0u8; 3 << 20];
        content[(2 << 20) + 5] = 0x5a;
        std::fs::write(&p, &content).unwrap();
        let regions = [(0u64, 2u64 << 20), (4 << 20, 1 << 20)];
        let mem = private_memory(File::open(&p).unwrap(), &regions).unwrap();
        let v: u8 = mem.read_obj(GuestAddress((4 << 20) + 5)).unwrap();
        assert_eq!(v, 0x5a, "second region reads the file at its offset");
        mem.write_obj(0x77u8, GuestAddress(5)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(5)).unwrap(), 0x77);
        assert_eq!(std::fs::read(&p).unwrap()[5], 0, "the file is untouched");
    }
}
