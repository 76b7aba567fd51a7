//! A domain's vifs joined to the pods' network namespaces.
//!
//! netback creates the backend half of each vif in dom0's root network
//! namespace as `vif<domid>.<devid>`; the hotplug script (`vif-hyper`) only
//! reports it ready. Before the domain is unpaused the plugin moves it into
//! the pod's netns under the name `NicSpec.device` (one `ip link set … netns
//! … name …`: netback vifs may change namespace, measured on Xen 4.17 with
//! Debian 12's 6.1 dom0 kernel), then the backend kit ([`nic::join`]) checks
//! the peer's MAC, sets the MTU, brings it up and joins it to `NicSpec.peer`
//! (the CNI interface) with tc ingress + `mirred egress redirect` both ways
//! (Kata's tcfilter model). When the domain is destroyed netback deletes the
//! vif from whichever namespace holds it; the core removes the namespace.
//!
//! The move runs iproute2's `ip` in dom0's root namespace (dom0 has it: Xen's
//! own hotplug scripts need iproute2), bounded in time and output.

use std::path::Path;
use std::time::Duration;

use hyper_hypervisor::NicSpec;

use crate::xl;

/// The `ip` call; it takes milliseconds, seconds under emulation.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the vif may take to show up after `xl create` returned.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// netback's name for the `devid`th vif of domain `domid`.
pub fn backend_name(domid: u32, devid: usize) -> String {
    format!("vif{domid}.{devid}")
}

/// Waits until dom0 has the interface `name` in its root namespace.
async fn appeared(name: &str) -> bool {
    let path = Path::new("/sys/class/net").join(name);
    let deadline = tokio::time::Instant::now() + APPEAR_TIMEOUT;
    loop {
        if path.exists() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves the domain's `devid`th vif into `nic.netns` as `nic.device` and
/// joins it to `nic.peer`. On an error the caller destroys the domain, which
/// removes the vif wherever it is, and calls [`detach`].
pub async fn join(domid: u32, devid: usize, nic: &NicSpec) -> Result<(), String> {
    let vif = backend_name(domid, devid);
    if !nic.netns.exists() {
        return Err(format!(
            "the pod's network namespace {} does not exist",
            nic.netns.display()
        ));
    }
    if !appeared(&vif).await {
        return Err(format!(
            "netback created no {vif} within {APPEAR_TIMEOUT:?} (is xen-netback loaded in dom0?)"
        ));
    }
    let netns = nic.netns.to_string_lossy();
    let args = [
        "link",
        "set",
        "dev",
        &vif,
        "netns",
        &netns,
        "name",
        &nic.device,
    ];
    let moved = xl::run(Path::new("ip"), &args, STEP_TIMEOUT)
        .await
        .and_then(|out| {
            out.success
                .then_some(())
                .ok_or_else(|| format!("`ip {}` failed: {}", args.join(" "), out.reason()))
        });
    moved.map_err(|e| {
        format!(
            "moving {vif} into the pod's netns as {} (dom0 needs iproute2's ip): {e}",
            nic.device
        )
    })?;
    let spec = nic.clone();
    tokio::task::spawn_blocking(move || hyper_hypervisor::nic::join(&spec))
        .await
        .map_err(|e| format!("joining {}: {e}", nic.device))?
        .map_err(|e| e.to_string())?;
    tracing::info!(domid, %vif, device = %nic.device, peer = %nic.peer, netns = %netns, "vif joined to the pod's network");
    Ok(())
}

/// After a failed launch: takes the peers' redirects away (the vifs went
/// with the domain).
pub async fn detach(nics: &[NicSpec]) {
    for nic in nics {
        let spec = nic.clone();
        match tokio::task::spawn_blocking(move || hyper_hypervisor::nic::detach(&spec)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(netns = %nic.netns.display(), peer = %nic.peer, "undoing the redirect: {e}")
            }
            Err(e) => tracing::warn!("undoing the redirect: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        assert_eq!(backend_name(7, 0), "vif7.0");
        assert_eq!(backend_name(12, 3), "vif12.3");
    }

    #[tokio::test]
    async fn a_missing_netns_is_named() {
        let nic = NicSpec {
            netns: "/nonexistent/netns/x".into(),
            peer: "eth0".into(),
            device: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        };
        let err = join(4242, 0, &nic).await.unwrap_err();
        assert!(err.contains("/nonexistent/netns/x"), "{err}");
    }
}
