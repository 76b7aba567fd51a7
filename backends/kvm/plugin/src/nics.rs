//! The VM's NICs on the plugin side: for each `VmSpec.nics` entry, a tap
//! made by the backend kit inside the pod's netns (IFF_VNET_HDR, joined to
//! the CNI interface by tc redirect both ways), handed to hyper-vmm as an
//! inherited fd (`"nets"` in its config).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use hyper_hypervisor::{nic, HypervisorError, NicSpec};

use hyper_vmm_config::NetConfig;

/// Checks the NICs of a spec before anything is created.
pub fn check(nics: &[NicSpec]) -> Result<(), HypervisorError> {
    let mut peers = std::collections::HashSet::new();
    let mut devices = std::collections::HashSet::new();
    for n in nics {
        // One redirect per peer: a second NIC on it would replace the first.
        if !peers.insert((&n.netns, &n.peer)) {
            return Err(HypervisorError::InvalidSpec(format!(
                "NIC {}: peer {} in {} already carries another NIC",
                n.device,
                n.peer,
                n.netns.display()
            )));
        }
        if !devices.insert((&n.netns, &n.device)) {
            return Err(HypervisorError::InvalidSpec(format!(
                "NIC device {} named twice in {}",
                n.device,
                n.netns.display()
            )));
        }
        nic::validate(n).map_err(|e| HypervisorError::InvalidSpec(e.to_string()))?;
        if u16::try_from(n.mtu).is_err() {
            return Err(HypervisorError::InvalidSpec(format!(
                "NIC {}: mtu {} is more than virtio-net's 65535",
                n.device, n.mtu
            )));
        }
    }
    Ok(())
}

/// Taps between their creation and hyper-vmm taking them. Dropped before
/// [`Taps::handed_over`], they are closed (the taps vanish with the last
/// holder) and the peers' redirects undone, so a failed launch leaves
/// nothing in the pod's netns.
pub struct Taps {
    attached: Vec<(NicSpec, OwnedFd)>,
    kept: bool,
}

impl Taps {
    /// Makes every NIC's tap; on an error the ones made are undone.
    pub async fn attach(nics: &[NicSpec]) -> Result<Taps, HypervisorError> {
        if nics.is_empty() {
            return Ok(Taps {
                attached: Vec::new(),
                kept: false,
            });
        }
        let nics = nics.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut taps = Taps {
                attached: Vec::new(),
                kept: false,
            };
            for n in nics {
                let fd = nic::attach_tap(&n, true)
                    .map_err(|e| HypervisorError::LaunchFailed(format!("NIC {}: {e}", n.device)))?;
                taps.attached.push((n, fd));
            }
            Ok(taps)
        })
        .await
        .map_err(|e| HypervisorError::Plugin(format!("attaching NICs: {e}")))?
    }

    /// hyper-vmm's view: the fds as the child inherits them.
    pub fn configs(&self) -> Vec<NetConfig> {
        self.attached
            .iter()
            .map(|(n, fd)| NetConfig {
                fd: fd.as_raw_fd(),
                mac: n.mac.clone(),
                mtu: u16::try_from(n.mtu).ok(),
            })
            .collect()
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.attached.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// hyper-vmm is up and holds its copies: ours are closed, the taps and
    /// the redirects stay for the VM's life (the core removes the netns).
    pub fn handed_over(mut self) {
        self.kept = true;
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (n, fd) in self.attached.drain(..) {
            drop(fd);
            // Short netlink calls on a thread of their own (the kit's).
            if let Err(e) = nic::detach(&n) {
                tracing::warn!(device = %n.device, "undoing the NIC's redirect: {e}");
            }
        }
    }
}
