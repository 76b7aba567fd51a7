//! Choosing between KVM and TCG.
//!
//! The decision is a pure function ([`choose_accel`]) of what the host
//! offers, so every case is tested without the host having it; the host
//! facts come from [`dev_kvm_status`] and [`is_kvm_pvm`].

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::config::AccelSetting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Why, in words an operator can check.
    pub reason: String,
}

/// The reason given when `auto` passes over a kvm_pvm `/dev/kvm`.
pub const PVM_REASON: &str =
    "/dev/kvm is kvm_pvm, a software nested hypervisor on which a normal guest \
     kernel cannot boot; using TCG";

/// Picks the accelerator. `dev_kvm` is `Ok` when `/dev/kvm` opens read-write
/// and answers the KVM API, else why not; `is_pvm` is whether the host's KVM
/// is kvm_pvm. `Err` means the configured accelerator cannot work here.
pub fn choose_accel(
    setting: AccelSetting,
    dev_kvm: Result<(), &str>,
    is_pvm: bool,
) -> Result<AccelChoice, String> {
    let choice = |accel, reason: String| Ok(AccelChoice { accel, reason });
    match (setting, dev_kvm, is_pvm) {
        (AccelSetting::Tcg, _, _) => choice(Accel::Tcg, "accel = \"tcg\" is configured".into()),
        (AccelSetting::Auto, Err(why), _) => {
            choice(Accel::Tcg, format!("/dev/kvm is not usable ({why}); using TCG"))
        }
        // kvm_pvm only runs guests built for PVM: an ordinary kernel such as
        // the hyperkernel crawls or dies in emulation failures on it.
        (AccelSetting::Auto, Ok(()), true) => choice(Accel::Tcg, PVM_REASON.into()),
        (AccelSetting::Auto, Ok(()), false) => choice(Accel::Kvm, "/dev/kvm is usable".into()),
        (AccelSetting::Kvm, Err(why), _) => Err(format!(
            "accel = \"kvm\" is configured but /dev/kvm is not usable ({why}); \
             set accel = \"auto\" or \"tcg\" in [hypervisor.qemu] to use TCG"
        )),
        (AccelSetting::Kvm, Ok(()), true) => Err(
            "accel = \"kvm\" is configured but /dev/kvm is kvm_pvm, a software nested hypervisor on which \
             a normal guest kernel cannot boot; set accel = \"auto\" or \"tcg\" in [hypervisor.qemu]"
                .into(),
        ),
        (AccelSetting::Kvm, Ok(()), false) => {
            choice(Accel::Kvm, "accel = \"kvm\" is configured and /dev/kvm is usable".into())
        }
    }
}

/// `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)` with `KVMIO` = 0xAE.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;

/// Whether `/dev/kvm` opens read-write and speaks the KVM API.
pub fn dev_kvm_status() -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm read-write: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION reads no memory and only returns an int;
    // the fd is open for the whole call. The kernel refuses the call unless
    // the (unused) argument is 0, so pass it explicitly: omitting a variadic
    // argument leaves whatever is in the register.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return Err(format!(
            "KVM_GET_API_VERSION on /dev/kvm failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    if version != KVM_API_VERSION {
        return Err(format!(
            "/dev/kvm answers KVM API version {version}, expected {KVM_API_VERSION}"
        ));
    }
    Ok(())
}

/// Whether the host's KVM is kvm_pvm. Without module support it is still
/// listed in /sys/module when built in; /proc/modules covers a loadable one.
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
        || std::fs::read_to_string("/proc/modules")
            .map(|m| {
                m.lines()
                    .any(|l| l.split_whitespace().next() == Some("kvm_pvm"))
            })
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto() {
        let c = choose_accel(AccelSetting::Auto, Ok(()), false).unwrap();
        assert_eq!(c.accel, Accel::Kvm);
        let c = choose_accel(AccelSetting::Auto, Ok(()), true).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(
            c.reason,
            "/dev/kvm is kvm_pvm, a software nested hypervisor on which a normal guest kernel \
             cannot boot; using TCG"
        );
        for pvm in [false, true] {
            let c = choose_accel(AccelSetting::Auto, Err("no such file"), pvm).unwrap();
            assert_eq!(c.accel, Accel::Tcg);
            assert!(c.reason.contains("no such file"), "{}", c.reason);
        }
    }

    #[test]
    fn tcg_always_works() {
        for (kvm, pvm) in [(Ok(()), false), (Ok(()), true), (Err("x"), false)] {
            let c = choose_accel(AccelSetting::Tcg, kvm, pvm).unwrap();
            assert_eq!(c.accel, Accel::Tcg);
        }
    }

    #[test]
    fn explicit_kvm() {
        let c = choose_accel(AccelSetting::Kvm, Ok(()), false).unwrap();
        assert_eq!(c.accel, Accel::Kvm);
        let e = choose_accel(AccelSetting::Kvm, Err("permission denied"), false).unwrap_err();
        assert!(
            e.contains("permission denied") && e.contains("accel = \"auto\""),
            "{e}"
        );
        let e = choose_accel(AccelSetting::Kvm, Ok(()), true).unwrap_err();
        assert!(e.contains("kvm_pvm"), "{e}");
    }

    #[test]
    fn host_facts() {
        // Whatever this host has, the checks answer; where /dev/kvm opens
        // read-write it must also pass the API check.
        let status = dev_kvm_status();
        let opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        assert_eq!(status.is_ok(), opens, "{status:?}");
        let _ = is_kvm_pvm();
    }
}
