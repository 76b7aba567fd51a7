//! Where a VM's guest RAM lives: QEMU's default private anonymous memory,
//! or a memory backend object (`-object memory-backend-…,id=mem` and
//! `-machine …,memory-backend=mem`) when something else needs to reach it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hyper_hypervisor::VmSpec;

use crate::cmdline::{escape, Boot};
use crate::config::Machine;

/// The id of the guest-RAM backend object.
pub const MEMORY_ID: &str = "mem";
/// The file a future template's RAM lives in, inside its run directory
/// (the same file system as the template directory, so the save moves it
/// by rename, never copies it).
pub const TEMPLATE_MEMORY_FILE: &str = "memory";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMemory {
    /// QEMU's default: private anonymous memory, which can be neither mapped
    /// by another process nor leaked through a descriptor.
    Anonymous,
    /// A shared memfd, for a VM with shares: vhost-user hands its descriptor
    /// to each `virtiofsd`, which reads and writes the guest's buffers
    /// itself; that needs RAM that is a file mapped `MAP_SHARED`.
    Memfd,
    /// A future template's RAM: a file mapped `MAP_SHARED` (`share=on`), so
    /// every guest write reaches the file; the save migrates only the device
    /// state (`x-ignore-shared`) and moves the file into the template.
    TemplateFile(PathBuf),
    /// A clone's RAM: the template's file mapped `MAP_PRIVATE`
    /// (`share=off`): clones share its clean pages and each one's writes
    /// go to its own copy-on-write pages, never into the file.
    CloneOf(PathBuf),
}

impl GuestMemory {
    /// The RAM a launch of `spec` gets.
    pub fn for_launch(spec: &VmSpec, boot: &Boot) -> Self {
        match boot {
            Boot::Incoming { memory } => GuestMemory::CloneOf(memory.to_path_buf()),
            Boot::Cold if spec.save_as_template => {
                GuestMemory::TemplateFile(template_memory_path(&spec.run_dir))
            }
            Boot::Cold if !spec.shares.is_empty() => GuestMemory::Memfd,
            Boot::Cold => GuestMemory::Anonymous,
        }
    }

    /// The `-machine` value.
    pub fn machine_arg(&self, machine: Machine) -> String {
        match self {
            GuestMemory::Anonymous => machine.as_str().to_string(),
            _ => format!("{},memory-backend={MEMORY_ID}", machine.as_str()),
        }
    }

    /// The `-object` arguments of the backend, if any.
    pub fn object_args(&self, memory_mib: u32) -> Vec<OsString> {
        let file = |path: &Path, share: &str| {
            let mut value = OsString::from(format!(
                "memory-backend-file,id={MEMORY_ID},size={memory_mib}M,mem-path="
            ));
            value.push(escape(path));
            value.push(format!(",share={share}"));
            value
        };
        let value = match self {
            GuestMemory::Anonymous => return Vec::new(),
            GuestMemory::Memfd => OsString::from(format!(
                "memory-backend-memfd,id={MEMORY_ID},size={memory_mib}M,share=on"
            )),
            GuestMemory::TemplateFile(path) => file(path, "on"),
            GuestMemory::CloneOf(path) => file(path, "off"),
        };
        vec!["-object".into(), value]
    }
}

/// Where a VM launched with `save_as_template` keeps its RAM.
pub fn template_memory_path(run_dir: &Path) -> PathBuf {
    run_dir.join(TEMPLATE_MEMORY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn anonymous_has_no_backend() {
        let m = GuestMemory::Anonymous;
        assert_eq!(m.machine_arg(Machine::Microvm), "microvm");
        assert!(m.object_args(256).is_empty());
    }

    #[test]
    fn backends() {
        assert_eq!(
            GuestMemory::Memfd.machine_arg(Machine::Q35),
            "q35,memory-backend=mem"
        );
        assert_eq!(
            strings(GuestMemory::Memfd.object_args(256)),
            ["-object", "memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        let template = GuestMemory::TemplateFile("/run/p,1/memory".into());
        assert_eq!(
            strings(template.object_args(128)),
            [
                "-object",
                "memory-backend-file,id=mem,size=128M,mem-path=/run/p,,1/memory,share=on"
            ]
        );
        let clone = GuestMemory::CloneOf("/t/memory".into());
        assert_eq!(
            strings(clone.object_args(128)),
            [
                "-object",
                "memory-backend-file,id=mem,size=128M,mem-path=/t/memory,share=off"
            ]
        );
        assert_eq!(
            clone.machine_arg(Machine::Microvm),
            "microvm,memory-backend=mem"
        );
    }
}
