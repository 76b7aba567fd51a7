//! Templates on Xen: a template domain saved with `xl save` (its memory,
//! vCPU and device state in libxl's checkpoint format), and this backend's
//! own versioned metadata next to it, checked before any clone is restored
//! from it with `xl restore` and the clone's own xl.cfg.
//!
//! Xen copies the checkpoint's memory into each restored domain: clones
//! share no pages with the template or with each other (unlike QEMU's and
//! hyper-vmm's private mappings of the template's memory file).
//!
//! A template directory holds:
//! * `domain.xlsave`: what `xl save` wrote;
//! * `template.json`: [`Metadata`] (format version, Xen version, guest type,
//!   the layout the clones must match, the checkpoint's size and sha256).

use std::io::Read;
use std::path::{Path, PathBuf};

use hyper_hypervisor::VmSpec;
use serde::{Deserialize, Serialize};

use crate::config::GuestType;

/// The version of this layout; any other is refused.
pub const FORMAT: u32 = 1;
pub const CHECKPOINT: &str = "domain.xlsave";
pub const METADATA: &str = "template.json";
/// template.json is small; a bigger one is not ours.
const MAX_METADATA: u64 = 64 * 1024;
/// A checkpoint holds the guest's memory and a little more: one much
/// bigger than the guest's memory is not one this backend wrote.
const CHECKPOINT_SLACK: u64 = 64 * 1024 * 1024;

/// The checkpoints already hashed in full by this process (by path and
/// device, inode, size and mtime).
pub type Verified = hyper_hypervisor::digest::DigestMemo;

/// One of the template's disks, as the clones' must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    pub id: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub format: u32,
    pub backend: String,
    /// `xl info`'s xen_version when saved: a checkpoint is restored by the
    /// same Xen and toolstack only.
    pub xen_version: String,
    pub guest_type: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The core's command line (the backend adds the channel and disk ids,
    /// which depend only on the layout).
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<DiskLayout>,
    pub nics: usize,
    pub share_tags: Vec<String>,
    pub checkpoint_size: u64,
    /// Lowercase hex.
    pub checkpoint_sha256: String,
}

impl Metadata {
    /// What a clone of `spec` needs the template to have been (the
    /// checkpoint's size and hash left empty).
    pub fn layout(spec: &VmSpec, xen_version: &str, guest_type: GuestType) -> Self {
        Self {
            format: FORMAT,
            backend: crate::BACKEND_NAME.to_string(),
            xen_version: xen_version.to_string(),
            guest_type: guest_type.as_str().to_string(),
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            cmdline: spec.cmdline.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            disks: spec
                .disks
                .iter()
                .map(|d| DiskLayout {
                    id: d.id.clone(),
                    read_only: d.read_only,
                })
                .collect(),
            nics: spec.nics.len(),
            share_tags: spec.shares.iter().map(|s| s.tag.clone()).collect(),
            checkpoint_size: 0,
            checkpoint_sha256: String::new(),
        }
    }

    /// Why a clone of `wanted`'s layout cannot come from this template.
    pub fn mismatch(&self, wanted: &Metadata) -> Option<String> {
        if self.format != FORMAT {
            return Some(format!(
                "format {} (this backend reads format {FORMAT})",
                self.format
            ));
        }
        let checks: [(&str, String, String); 11] = [
            ("backend", self.backend.clone(), wanted.backend.clone()),
            (
                "Xen version",
                self.xen_version.clone(),
                wanted.xen_version.clone(),
            ),
            (
                "guest type",
                self.guest_type.clone(),
                wanted.guest_type.clone(),
            ),
            (
                "kernel",
                self.kernel.display().to_string(),
                wanted.kernel.display().to_string(),
            ),
            (
                "initrd",
                self.initrd.display().to_string(),
                wanted.initrd.display().to_string(),
            ),
            ("command line", self.cmdline.clone(), wanted.cmdline.clone()),
            ("vcpus", self.vcpus.to_string(), wanted.vcpus.to_string()),
            (
                "memory (MiB)",
                self.memory_mib.to_string(),
                wanted.memory_mib.to_string(),
            ),
            (
                "disks (id, read-only)",
                format!("{:?}", self.disks),
                format!("{:?}", wanted.disks),
            ),
            ("NICs", self.nics.to_string(), wanted.nics.to_string()),
            (
                "share tags",
                format!("{:?}", self.share_tags),
                format!("{:?}", wanted.share_tags),
            ),
        ];
        checks
            .into_iter()
            .find(|(_, have, want)| have != want)
            .map(|(what, have, want)| format!("its {what} is {have}, the clone's is {want}"))
    }
}

/// Size and sha256 (hex) of a file, read once.
pub fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let (size, sum) = hyper_hypervisor::digest::file_sha256(path)?;
    Ok((size, hyper_hypervisor::digest::hex(&sum)))
}

/// Reads and checks a template directory for a clone of layout `wanted`:
/// the metadata (bounded, versioned, the same layout), then the checkpoint
/// (a plain file of the recorded size and sha256). `verified` remembers
/// checkpoints already hashed (by device, inode, size and mtime), so each
/// is read in full once per plugin process, not once per clone.
pub fn check(dir: &Path, wanted: &Metadata, verified: &Verified) -> Result<PathBuf, String> {
    let meta_path = dir.join(METADATA);
    let file = std::fs::File::open(&meta_path)
        .map_err(|e| format!("cannot open {}: {e}", meta_path.display()))?;
    let mut text = String::new();
    file.take(MAX_METADATA + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", meta_path.display()))?;
    if text.len() as u64 > MAX_METADATA {
        return Err(format!(
            "{} is larger than {MAX_METADATA} bytes",
            meta_path.display()
        ));
    }
    let have: Metadata = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not this backend's metadata: {e}",
            meta_path.display()
        )
    })?;
    if let Some(why) = have.mismatch(wanted) {
        return Err(format!("{}: {why}", dir.display()));
    }
    let limit = u64::from(wanted.memory_mib) * 1024 * 1024 + CHECKPOINT_SLACK;
    if have.checkpoint_size == 0 || have.checkpoint_size > limit {
        return Err(format!(
            "{}: a checkpoint of {} bytes is not one of a {} MiB domain",
            meta_path.display(),
            have.checkpoint_size,
            wanted.memory_mib
        ));
    }
    let checkpoint = dir.join(CHECKPOINT);
    let stat = std::fs::symlink_metadata(&checkpoint)
        .map_err(|e| format!("{}: {e}", checkpoint.display()))?;
    if !stat.is_file() {
        return Err(format!("{} is not a regular file", checkpoint.display()));
    }
    if stat.len() != have.checkpoint_size {
        return Err(format!(
            "{} has {} bytes, its metadata says {} (truncated or replaced)",
            checkpoint.display(),
            stat.len(),
            have.checkpoint_size
        ));
    }
    let (size, sha) = verified
        .file_sha256(&checkpoint)
        .map_err(|e| format!("{}: {e}", checkpoint.display()))?;
    if size != have.checkpoint_size || hyper_hypervisor::digest::hex(&sha) != have.checkpoint_sha256
    {
        return Err(format!(
            "{} does not match its metadata's size and sha256 (altered or truncated)",
            checkpoint.display()
        ));
    }
    Ok(checkpoint)
}

/// Writes `template.json` for the checkpoint just saved into `dir`, and
/// syncs both.
pub fn write_metadata(dir: &Path, mut meta: Metadata) -> Result<(), String> {
    let checkpoint = dir.join(CHECKPOINT);
    let (size, sha) = digest(&checkpoint).map_err(|e| format!("{}: {e}", checkpoint.display()))?;
    meta.checkpoint_size = size;
    meta.checkpoint_sha256 = sha;
    let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
    sync(&checkpoint).map_err(|e| format!("cannot sync {}: {e}", checkpoint.display()))?;
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| format!("cannot encode the template's metadata: {e}"))?;
    let path = dir.join(METADATA);
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    sync(&path).map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_hypervisor::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            id: "t1".into(),
            kernel: "/payload/hyperkernel".into(),
            initrd: "/payload/hyperstart.img".into(),
            cmdline: "quiet panic=-1 rdinit=/init".into(),
            vcpus: 1,
            memory_mib: 64,
            disks: vec![DiskSpec {
                path: "/state/placeholder0".into(),
                read_only: true,
                id: "hyper-rootfs0".into(),
            }],
            console_log: "/state/c.log".into(),
            run_dir: "/state/vm".into(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: true,
        }
    }

    fn saved(dir: &Path, content: &[u8]) -> Metadata {
        std::fs::write(dir.join(CHECKPOINT), content).unwrap();
        let meta = Metadata::layout(&spec(), "4.17.6", GuestType::Pv);
        write_metadata(dir, meta).unwrap();
        serde_json::from_slice(&std::fs::read(dir.join(METADATA)).unwrap()).unwrap()
    }

    #[test]
    fn a_saved_template_is_accepted_once_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = saved(dir.path(), b"checkpoint bytes");
        assert_eq!(meta.checkpoint_size, 16);
        assert_eq!(meta.checkpoint_sha256.len(), 64);
        let wanted = Metadata::layout(&spec(), "4.17.6", GuestType::Pv);
        let verified = Verified::default();
        let path = check(dir.path(), &wanted, &verified).unwrap();
        assert_eq!(path, dir.path().join(CHECKPOINT));
        assert!(check(dir.path(), &wanted, &verified).is_ok());
    }

    #[test]
    fn truncated_altered_or_foreign_templates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        saved(dir.path(), b"checkpoint bytes");
        let wanted = Metadata::layout(&spec(), "4.17.6", GuestType::Pv);
        let fresh = Verified::default;
        // Truncated.
        std::fs::write(dir.path().join(CHECKPOINT), b"checkpoint").unwrap();
        let err = check(dir.path(), &wanted, &fresh()).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // Same size, other bytes.
        std::fs::write(dir.path().join(CHECKPOINT), b"checkpoint BYTES").unwrap();
        let err = check(dir.path(), &wanted, &fresh()).unwrap_err();
        assert!(err.contains("altered"), "{err}");
        std::fs::write(dir.path().join(CHECKPOINT), b"checkpoint bytes").unwrap();
        assert!(check(dir.path(), &wanted, &fresh()).is_ok());
        // Another layout, Xen, guest type.
        let mut other = spec();
        other.memory_mib = 128;
        let err = check(
            dir.path(),
            &Metadata::layout(&other, "4.17.6", GuestType::Pv),
            &fresh(),
        )
        .unwrap_err();
        assert!(
            err.contains("memory (MiB) is 64, the clone's is 128"),
            "{err}"
        );
        let mut other = spec();
        other.disks[0].read_only = false;
        let err = check(
            dir.path(),
            &Metadata::layout(&other, "4.17.6", GuestType::Pv),
            &fresh(),
        )
        .unwrap_err();
        assert!(err.contains("disks"), "{err}");
        let err = check(
            dir.path(),
            &Metadata::layout(&spec(), "4.18.0", GuestType::Pv),
            &fresh(),
        )
        .unwrap_err();
        assert!(err.contains("Xen version"), "{err}");
        let err = check(
            dir.path(),
            &Metadata::layout(&spec(), "4.17.6", GuestType::Pvh),
            &fresh(),
        )
        .unwrap_err();
        assert!(err.contains("guest type"), "{err}");
        // Another format, garbage, too big, missing.
        let path = dir.path().join(METADATA);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"format\": 1", "\"format\": 2")).unwrap();
        let err = check(dir.path(), &wanted, &fresh()).unwrap_err();
        assert!(err.contains("format 2"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let err = check(dir.path(), &wanted, &fresh()).unwrap_err();
        assert!(err.contains("not this backend's metadata"), "{err}");
        std::fs::write(&path, vec![b' '; (MAX_METADATA + 10) as usize]).unwrap();
        let err = check(dir.path(), &wanted, &fresh()).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(check(dir.path(), &wanted, &fresh()).is_err());
    }

    #[test]
    fn a_checkpoint_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        saved(dir.path(), b"checkpoint bytes");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(dir.path().join(CHECKPOINT), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(CHECKPOINT)).unwrap();
        let wanted = Metadata::layout(&spec(), "4.17.6", GuestType::Pv);
        let err = check(dir.path(), &wanted, &Verified::default()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
