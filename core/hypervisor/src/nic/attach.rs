//! One [`NicSpec`] made real: the backend's device inside the pod's
//! namespace, joined to the CNI interface both ways.

use rtnetlink::Handle;
use std::os::fd::OwnedFd;

use super::{link, nl, tap, tc, Mac, NicError};
use crate::NicSpec;

/// Checks a spec before anything is created: interface names, a unicast MAC,
/// an MTU Linux accepts, an absolute namespace path. Returns the MAC.
pub fn validate(spec: &NicSpec) -> Result<Mac, NicError> {
    if !spec.netns.is_absolute() {
        return Err(NicError::invalid(
            "netns",
            spec.netns.display().to_string(),
            "must be an absolute path to a network namespace file",
        ));
    }
    link::validate_ifname("peer", &spec.peer)?;
    link::validate_ifname("device", &spec.device)?;
    if spec.peer == spec.device {
        return Err(NicError::invalid(
            "device",
            &spec.device,
            "must differ from peer (the backend makes its own device next to it)",
        ));
    }
    let mac = Mac::parse(&spec.mac)?;
    if !mac.is_unicast() {
        return Err(NicError::invalid(
            "mac",
            &spec.mac,
            "a NIC needs a unicast address",
        ));
    }
    link::validate_mtu(spec.mtu)?;
    Ok(mac)
}

/// In the current thread's namespace: checks that `peer` carries the MAC the
/// guest will use, gives `device` the spec's MTU, brings it up, and joins it
/// to `peer` both ways. Undoes its redirects if a step fails.
async fn join_here(handle: &Handle, spec: &NicSpec, mac: Mac) -> Result<(), NicError> {
    let ns = spec.netns.as_path();
    let peer = link::info_here(handle, ns, &spec.peer).await?;
    if peer.mac != Some(mac) {
        let found = peer
            .mac
            .map_or_else(|| "none".to_owned(), |m| m.to_string());
        return Err(NicError::invalid(
            "mac",
            &spec.mac,
            format!(
                "peer {} in {} has MAC {found}: the guest NIC must carry the peer's MAC",
                spec.peer,
                ns.display()
            ),
        ));
    }
    let device = link::info_here(handle, ns, &spec.device).await?;
    link::set_mtu_up_here(handle, ns, &spec.device, device.index, spec.mtu).await?;
    tc::join_both_ways_here(handle, ns, &spec.peer, &spec.device).await
}

/// Makes the NIC a VMM such as QEMU or `hyper-vmm` serves from user space:
/// a new tap `spec.device` in `spec.netns` (see [`tap::open`] for
/// `vnet_hdr`), with `spec.mtu`, up, and joined to `spec.peer` with tc
/// redirects both ways. Hand the returned descriptor to the VMM; the tap
/// lives as long as some process holds it. On error nothing is left: no
/// tap, no redirect on the peer.
///
/// The backend (not the core) does this because the device exists only once
/// the backend made it, and what it is depends on the backend (a Xen vif is
/// created by `xl`; see [`join`]).
pub fn attach_tap(spec: &NicSpec, vnet_hdr: bool) -> Result<OwnedFd, NicError> {
    let mac = validate(spec)?;
    let spec = spec.clone();
    let netns = spec.netns.clone();
    nl::run_in(&netns, move |h, _| async move {
        let ns = spec.netns.as_path();
        {
            // The peer first: a missing peer is the likelier mistake, and
            // it is reported before any tap exists.
            link::info_here(&h, ns, &spec.peer).await?;
            let fd = tap::open_here(ns, &spec.device, vnet_hdr)?;
            if let Err(e) = join_here(&h, &spec, mac).await {
                drop(fd); // the tap (and its own filter) goes with it
                if let Ok(peer) = link::info_here(&h, ns, &spec.peer).await {
                    let _ = tc::clear_ingress_here(&h, ns, &spec.peer, peer.index).await;
                }
                return Err(e);
            }
            tracing::info!(
                netns = %ns.display(), peer = %spec.peer, device = %spec.device,
                mac = %mac, mtu = spec.mtu, "tap attached"
            );
            Ok(fd)
        }
    })
}

/// Joins a device that already exists in `spec.netns` (a Xen backend vif
/// moved there) to `spec.peer`: MTU, up, redirect both ways. On error the
/// peer keeps no redirect.
pub fn join(spec: &NicSpec) -> Result<(), NicError> {
    let mac = validate(spec)?;
    let spec = spec.clone();
    let netns = spec.netns.clone();
    nl::run_in(&netns, move |h, _| async move {
        let ns = spec.netns.as_path();
        {
            let result = join_here(&h, &spec, mac).await;
            if result.is_err() {
                if let Ok(peer) = link::info_here(&h, ns, &spec.peer).await {
                    let _ = tc::clear_ingress_here(&h, ns, &spec.peer, peer.index).await;
                }
            }
            result
        }
    })
}

/// Undoes the peer's side of a join (its ingress redirect), for a backend
/// whose launch failed after [`attach_tap`]/[`join`]; the device's side goes
/// with the device. A missing namespace or peer: nothing to undo. Returns
/// whether a redirect was removed.
pub fn detach(spec: &NicSpec) -> Result<bool, NicError> {
    if !spec.netns.exists() {
        return Ok(false);
    }
    match tc::clear_ingress(&spec.netns, &spec.peer) {
        Err(NicError::NoSuchLink { .. }) => Ok(false),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NicSpec {
        NicSpec {
            netns: "/run/netns/hyper-x".into(),
            peer: "eth0".into(),
            device: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        }
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate(&spec()).unwrap().to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn bad_specs_name_the_field() {
        type Mutation = Box<dyn Fn(&mut NicSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("netns", Box::new(|s| s.netns = "relative".into())),
            ("peer", Box::new(|s| s.peer = "a/b".into())),
            ("device", Box::new(|s| s.device = "0123456789abcdef".into())),
            ("device", Box::new(|s| s.device = "eth0".into())),
            ("mac", Box::new(|s| s.mac = "02:00:00:00:00".into())),
            ("mac", Box::new(|s| s.mac = "01:00:5e:00:00:01".into())),
            ("mtu", Box::new(|s| s.mtu = 10)),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = validate(&s).unwrap_err().to_string();
            assert!(
                err.contains(&format!("invalid NIC {field}")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn detaching_from_a_missing_namespace_is_a_no_op() {
        let mut s = spec();
        s.netns = "/nonexistent/hyper-nic-test".into();
        assert!(!detach(&s).unwrap());
    }
}
