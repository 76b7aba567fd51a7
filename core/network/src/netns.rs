//! The pod's network namespace and the facts CNI left in it, through the
//! backend kit's `hyper_hypervisor::nic` (one implementation of named
//! namespaces for the core and the backends).

use std::path::{Path, PathBuf};

use hyper_hypervisor::nic;

use crate::NetworkError;

fn kit(e: nic::NicError) -> NetworkError {
    NetworkError::Nic(e.to_string())
}

/// The namespace name of pod `id` (`hyper-<id>`).
pub fn name_for(id: &str) -> String {
    format!("{}{id}", nic::netns::PREFIX)
}

/// The path of pod `id`'s namespace.
pub fn path_for(id: &str) -> PathBuf {
    nic::netns::path(&name_for(id))
}

/// Makes pod `id`'s namespace; its path.
pub fn create(id: &str) -> Result<PathBuf, NetworkError> {
    nic::netns::create(&name_for(id)).map_err(kit)
}

/// Removes a namespace made by [`create`]; gone already is fine.
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    nic::netns::remove(path).map(|_| ()).map_err(kit)
}

/// The MAC (`aa:bb:…`) and MTU of link `ifname` inside `netns`.
pub fn link_info(netns: &Path, ifname: &str) -> Result<(String, u32), NetworkError> {
    let info = nic::link::info(netns, ifname).map_err(kit)?;
    let mac = info.mac.ok_or_else(|| {
        NetworkError::Nic(format!(
            "{ifname} in {} has no MAC address: the network's main plugin must make an Ethernet interface",
            netns.display()
        ))
    })?;
    Ok((mac.to_string(), info.mtu))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (the e2e machine runs as root); skipped otherwise.
    #[test]
    fn a_namespace_is_made_read_and_removed() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let id = format!("unit-{}", std::process::id());
        let path = create(&id).unwrap();
        assert_eq!(path, path_for(&id));
        assert!(create(&id).is_err(), "a second one at the same path");
        assert!(link_info(&path, "lo").is_ok());
        assert!(link_info(&path, "eth9").is_err());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
