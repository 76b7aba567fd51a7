//! A template's own metadata (`template.json`): what the save recorded, and
//! the checks a restore makes against it before anything starts.
//!
//! Everything in a template directory is read as untrusted: each file's
//! type and size are checked before it is read, reads are bounded, and the
//! device state is checked against its recorded SHA-256 and then handed to
//! QEMU from the very bytes that were hashed.

use std::io::Read;
use std::path::{Path, PathBuf};

use hyper_hypervisor::VmSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::accel::Accel;
use crate::config::QemuConfig;

/// The version of this file's layout; a restore refuses any other.
pub const FORMAT: u32 = 1;
pub const META_FILE: &str = "template.json";
/// The guest RAM (the template VM's memory-backend file, moved in).
pub const MEMORY_FILE: &str = "memory";
/// QEMU's migration stream of the device and vCPU state (no RAM: it is
/// migrated with `x-ignore-shared`).
pub const STATE_FILE: &str = "state";
/// `template.json` is a few hundred bytes.
pub const MAX_META_BYTES: u64 = 64 * 1024;
/// The device state of a microvm or q35 guest is tens of KiB; anything near
/// this is not one of ours.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// One file the template depends on, by path and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    pub path: PathBuf,
    pub size: u64,
}

impl FileId {
    fn of(what: &str, path: &Path) -> Result<Self, String> {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            size: meta.len(),
        })
    }
}

/// One disk slot: the clones plug their own files into the same slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSlot {
    pub id: String,
    pub read_only: bool,
}

/// Everything a clone's QEMU must have in common with the template's for
/// the saved device state to load and the guest to find what it left:
/// the same binary and version, machine, accelerator, CPUs, memory, boot
/// payload and device slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub qemu_binary: PathBuf,
    pub qemu_version: String,
    pub machine: String,
    pub accel: String,
    pub extra_args: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: FileId,
    pub initrd: FileId,
    pub cmdline: String,
    pub disks: Vec<DiskSlot>,
    pub nics: usize,
}

impl Layout {
    /// The layout a VM of `spec` gets from this backend.
    pub fn of(
        config: &QemuConfig,
        accel: Accel,
        qemu_version: &str,
        spec: &VmSpec,
    ) -> Result<Self, String> {
        Ok(Self {
            qemu_binary: config.binary.clone(),
            qemu_version: qemu_version.to_string(),
            machine: config.machine.as_str().to_string(),
            accel: accel.as_str().to_string(),
            extra_args: config.extra_args.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: FileId::of("kernel", &spec.kernel)?,
            initrd: FileId::of("initrd", &spec.initrd)?,
            cmdline: spec.cmdline.clone(),
            disks: spec
                .disks
                .iter()
                .map(|d| DiskSlot {
                    id: d.id.clone(),
                    read_only: d.read_only,
                })
                .collect(),
            nics: spec.nics.len(),
        })
    }

    /// The first fields in which `self` (the template's) and `clone`
    /// differ, as "field: template … vs clone …".
    pub fn differences(&self, clone: &Layout) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(clone))
        else {
            return vec!["cannot compare the layouts".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| {
                let other = b.get(k).cloned().unwrap_or_default();
                format!("{k}: template {v} vs this VM {other}")
            })
            .collect()
    }
}

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMeta {
    pub format: u32,
    pub layout: Layout,
    /// The size of [`MEMORY_FILE`]: `memory_mib` MiB.
    pub memory_bytes: u64,
    pub state_bytes: u64,
    /// Lower-case hex SHA-256 of [`STATE_FILE`].
    pub state_sha256: String,
}

/// A template that passed every check: its RAM file and its device state
/// (the bytes that were hashed, to be streamed to QEMU as they are).
#[derive(Debug)]
pub struct Checked {
    pub memory: PathBuf,
    pub state: Vec<u8>,
}

pub use hyper_hypervisor::digest::hex;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A regular file (not a symlink, not a device) of at most `max` bytes.
fn regular_file(dir: &Path, name: &str, max: u64) -> Result<(PathBuf, u64), String> {
    let path = dir.join(name);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!(
            "{} is {} bytes, over the {max} a template of this backend has",
            path.display(),
            meta.len()
        ));
    }
    Ok((path, meta.len()))
}

/// Reads at most `max` bytes of `path` (which may have grown since it was
/// looked at).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is over {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// Reads `dir/template.json`, bounded and strictly parsed.
pub fn read(dir: &Path) -> Result<TemplateMeta, String> {
    let (path, _) = regular_file(dir, META_FILE, MAX_META_BYTES)?;
    let bytes = read_bounded(&path, MAX_META_BYTES)?;
    // The format first, so a newer layout is named as such rather than as a
    // parse error of a field this version does not know.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) => {
            return Err(format!(
                "{} is format {f}; this backend reads format {FORMAT} only",
                path.display()
            ))
        }
        None => return Err(format!("{} has no format number", path.display())),
    }
    serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every check a restore makes before starting anything: the metadata's
/// format, the layout `clone` (what this backend would give the clone's
/// spec) against the template's, the RAM file's type and exact size, and
/// the state file's size and SHA-256.
pub fn check(dir: &Path, clone: &Layout) -> Result<Checked, String> {
    let meta = read(dir)?;
    let differences = meta.layout.differences(clone);
    if !differences.is_empty() {
        return Err(format!(
            "it was saved for another VM layout: {}",
            differences.join("; ")
        ));
    }
    let expected_memory = u64::from(clone.memory_mib) << 20;
    if meta.memory_bytes != expected_memory {
        return Err(format!(
            "{META_FILE} records {} bytes of memory for {} MiB",
            meta.memory_bytes, clone.memory_mib
        ));
    }
    let (memory, memory_len) = regular_file(dir, MEMORY_FILE, expected_memory)?;
    if memory_len != expected_memory {
        return Err(format!(
            "{} is {memory_len} bytes; the template's memory is {expected_memory} (truncated?)",
            memory.display()
        ));
    }
    if meta.state_bytes > MAX_STATE_BYTES {
        return Err(format!(
            "{META_FILE} records a {}-byte state, over {MAX_STATE_BYTES}",
            meta.state_bytes
        ));
    }
    let (state_path, state_len) = regular_file(dir, STATE_FILE, MAX_STATE_BYTES)?;
    if state_len != meta.state_bytes {
        return Err(format!(
            "{} is {state_len} bytes; {META_FILE} records {}",
            state_path.display(),
            meta.state_bytes
        ));
    }
    let state = read_bounded(&state_path, meta.state_bytes)?;
    let digest = sha256_hex(&state);
    if state.len() as u64 != meta.state_bytes || digest != meta.state_sha256 {
        return Err(format!(
            "{} does not match its checksum in {META_FILE} (altered or half-written)",
            state_path.display()
        ));
    }
    Ok(Checked { memory, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            qemu_binary: "/usr/bin/qemu-system-x86_64".into(),
            qemu_version: "7.2.22".into(),
            machine: "microvm".into(),
            accel: "tcg".into(),
            extra_args: Vec::new(),
            vcpus: 1,
            memory_mib: 1,
            kernel: FileId {
                path: "/k".into(),
                size: 10,
            },
            initrd: FileId {
                path: "/i".into(),
                size: 20,
            },
            cmdline: "quiet".into(),
            disks: vec![DiskSlot {
                id: "rootfs".into(),
                read_only: true,
            }],
            nics: 1,
        }
    }

    fn template(dir: &Path) -> TemplateMeta {
        let state = b"QEVM state".to_vec();
        std::fs::write(dir.join(STATE_FILE), &state).unwrap();
        std::fs::write(dir.join(MEMORY_FILE), vec![0u8; 1 << 20]).unwrap();
        let meta = TemplateMeta {
            format: FORMAT,
            layout: layout(),
            memory_bytes: 1 << 20,
            state_bytes: state.len() as u64,
            state_sha256: sha256_hex(&state),
        };
        std::fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        meta
    }

    #[test]
    fn a_good_template_passes() {
        let dir = tempfile::tempdir().unwrap();
        template(dir.path());
        let checked = check(dir.path(), &layout()).unwrap();
        assert_eq!(checked.state, b"QEVM state");
        assert_eq!(checked.memory, dir.path().join(MEMORY_FILE));
    }

    #[test]
    fn another_layout_is_named() {
        let dir = tempfile::tempdir().unwrap();
        template(dir.path());
        let mut other = layout();
        other.disks[0].read_only = false;
        other.nics = 0;
        other.qemu_version = "8.0.0".into();
        let e = check(dir.path(), &other).unwrap_err();
        for field in ["disks", "nics", "qemu_version"] {
            assert!(e.contains(field), "{e}");
        }
        assert!(!e.contains("vcpus"), "{e}");
    }

    #[test]
    fn truncated_memory_altered_state_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        template(dir.path());
        let memory = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(MEMORY_FILE))
            .unwrap();
        memory.set_len(4096).unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains("truncated"), "{e}");

        template(dir.path());
        std::fs::write(dir.path().join(STATE_FILE), b"QEVM stat3").unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(dir.path().join(STATE_FILE), b"QEVM stat").unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains("records"), "{e}");

        let mut meta = template(dir.path());
        meta.format = 2;
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains("format 2"), "{e}");
        std::fs::write(dir.path().join(META_FILE), b"{\"format\": 1, \"extra\": 1}").unwrap();
        assert!(check(dir.path(), &layout()).is_err());
    }

    #[test]
    fn symlinks_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        template(dir.path());
        std::fs::remove_file(dir.path().join(MEMORY_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(MEMORY_FILE)).unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(dir.path().join(META_FILE)).unwrap();
        let e = check(dir.path(), &layout()).unwrap_err();
        assert!(e.contains(META_FILE), "{e}");
    }
}
