//! Can this host run hyper-vmm guests? Every check is a local syscall or a
//! file read: the probe cannot hang.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hyper_hypervisor::ProbeReport;

use hyper_vmm_config::host_is_pvm;

pub const PVM_REASON: &str = "/dev/kvm is kvm_pvm, a software nested hypervisor on which a normal Linux guest cannot boot (it runs mostly emulated and hangs or crawls); use the qemu backend with TCG on this host, or a host with hardware KVM";

/// /dev/kvm present and openable read-write.
pub fn dev_kvm() -> Result<(), String> {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "/dev/kvm does not exist: load kvm_intel or kvm_amd and enable virtualization in the firmware".into(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(
            "no permission to open /dev/kvm: add the user running hyperd to the kvm group".into(),
        ),
        Err(e) => Err(format!("cannot open /dev/kvm: {e}")),
    }
}

pub fn check_vmm(path: &Path) -> Result<(), String> {
    let fix = "build it (`cargo build --release -p hyper-vmm`, `make install`) or set `vmm` in [hypervisor.kvm]";
    let meta =
        std::fs::metadata(path).map_err(|e| format!("hyper-vmm {}: {e}; {fix}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "hyper-vmm {} is not an executable file; {fix}",
            path.display()
        ));
    }
    Ok(())
}

/// The verdict, with `pvm` and `dev_kvm` passed in so tests can cover
/// every branch.
pub fn verdict(vmm: &Path, dev_kvm: Result<(), String>, pvm: bool) -> ProbeReport {
    let mut details = BTreeMap::new();
    details.insert("vmm".to_string(), vmm.display().to_string());
    details.insert("kvm_pvm".to_string(), pvm.to_string());
    let no = |reason: String, details| ProbeReport {
        usable: false,
        reason,
        details,
    };
    if let Err(reason) = dev_kvm {
        return no(reason, details);
    }
    if pvm {
        return no(PVM_REASON.to_string(), details);
    }
    if let Err(reason) = check_vmm(vmm) {
        return no(reason, details);
    }
    match kvm_api_version() {
        Ok(v) => {
            details.insert("kvm_api_version".into(), v.to_string());
        }
        Err(e) => return no(format!("cannot open /dev/kvm: {e}"), details),
    }
    ProbeReport {
        usable: true,
        reason: "hardware KVM is available and hyper-vmm is installed".into(),
        details,
    }
}

/// `KVM_GET_API_VERSION` (`_IO(KVMIO, 0x00)`), asked directly: the plugin
/// links no KVM crate (hyper-vmm does the rest).
const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;

/// /dev/kvm's API version (12 on every Linux since 2.6.22).
fn kvm_api_version() -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a
    // number; `f` is an open /dev/kvm for the duration of the call.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

pub fn probe(vmm: &Path) -> ProbeReport {
    verdict(vmm, dev_kvm(), host_is_pvm())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dev_kvm_is_reported_first() {
        let r = verdict(
            Path::new("/bin/true"),
            Err("/dev/kvm does not exist".into()),
            true,
        );
        assert!(!r.usable);
        assert!(r.reason.contains("/dev/kvm does not exist"));
    }

    #[test]
    fn pvm_is_not_usable_and_says_why() {
        let r = verdict(Path::new("/bin/true"), Ok(()), true);
        assert!(!r.usable);
        assert!(
            r.reason.contains("kvm_pvm") && r.reason.contains("cannot boot"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn missing_vmm_binary_is_named() {
        let r = verdict(Path::new("/nonexistent/hyper-vmm"), Ok(()), false);
        assert!(!r.usable);
        assert!(r.reason.contains("/nonexistent/hyper-vmm"), "{}", r.reason);
    }

    #[test]
    fn the_real_probe_matches_this_host_and_is_quick() {
        let t = std::time::Instant::now();
        let r = probe(Path::new("/bin/true"));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        if host_is_pvm() {
            assert!(!r.usable);
            assert_eq!(r.reason, PVM_REASON);
        }
    }
}
