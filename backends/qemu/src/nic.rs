//! The VM's NICs: one tap per [`NicSpec`], made by the backend kit
//! ([`hyper_hypervisor::nic`]) inside the pod's network namespace and joined
//! there to the CNI interface; QEMU gets the tap as an inherited descriptor
//! (`-netdev tap,fd=N`; the tap has `IFF_VNET_HDR`, which QEMU detects).
//!
//! The tap is not persistent: once QEMU has it, QEMU's descriptor is the only
//! one, so the tap ends with QEMU (killed, crashed or quit) and a takeover
//! needs nothing. The peer's redirect goes with the namespace, which the core
//! removes; after a failed launch [`Taps::release`] undoes it at once.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use hyper_hypervisor::nic;
use hyper_hypervisor::{HypervisorError, NicSpec};

/// The taps of one launch, held by the backend until QEMU has inherited them.
pub struct Taps {
    specs: Vec<NicSpec>,
    fds: Vec<OwnedFd>,
}

impl Taps {
    /// Opens and joins a tap for every NIC of the spec, in order. On error
    /// nothing of any NIC is left (no tap, no redirect).
    pub async fn attach(vm: &str, specs: &[NicSpec]) -> Result<Taps, HypervisorError> {
        if specs.is_empty() {
            return Ok(Taps {
                specs: Vec::new(),
                fds: Vec::new(),
            });
        }
        let specs = specs.to_vec();
        let vm = vm.to_owned();
        // The kit blocks (a thread per namespace visit): not on a worker.
        tokio::task::spawn_blocking(move || {
            let mut taps = Taps {
                specs: Vec::with_capacity(specs.len()),
                fds: Vec::with_capacity(specs.len()),
            };
            for (i, spec) in specs.iter().enumerate() {
                match nic::attach_tap(spec, true) {
                    Ok(fd) => {
                        taps.fds.push(fd);
                        taps.specs.push(spec.clone());
                    }
                    Err(e) => {
                        taps.release_now();
                        return Err(HypervisorError::LaunchFailed(format!(
                            "VM {vm}: cannot attach NIC {i} ({} in {}): {e}",
                            spec.device,
                            spec.netns.display()
                        )));
                    }
                }
            }
            Ok(taps)
        })
        .await
        .map_err(|e| HypervisorError::LaunchFailed(format!("attaching NICs: {e}")))?
    }

    /// The descriptors, in NIC order, for the command line and `pre_exec`.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// QEMU has inherited the taps: drop this process's copies, so QEMU's are
    /// the only ones and the taps end with it.
    pub fn handed_over(self) {
        drop(self.fds);
    }

    /// The launch failed: close the taps (they vanish once no QEMU holds
    /// them) and remove the peers' redirects.
    pub async fn release(mut self) {
        if self.specs.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || self.release_now()).await;
    }

    fn release_now(&mut self) {
        self.fds.clear();
        for spec in self.specs.drain(..) {
            if let Err(e) = nic::detach(&spec) {
                tracing::warn!(netns = %spec.netns.display(), peer = %spec.peer, "cannot undo the redirect: {e}");
            }
        }
    }
}

/// For `pre_exec`, in the forked child: lets `fds` survive `exec` (they are
/// close-on-exec in hyperd, so no other child inherits them). Only
/// async-signal-safe calls.
pub fn inherit(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl(2) on a descriptor number this process owns (the
        // parent keeps the OwnedFd open until after the spawn); F_SETFD only
        // changes its close-on-exec flag.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
