//! Kata's "tcfilter" join: everything arriving on one interface leaves
//! through the other, in both directions, so the interface CNI configured and
//! the VM's device behave as one wire. Per direction, the equivalent of
//!
//! ```text
//! tc qdisc add dev FROM ingress
//! tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 \
//!     action mirred egress redirect dev TO
//! ```
//!
//! sent with rtnetlink's traffic-control requests (no `tc` binary needed).

use std::path::Path;

use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;

use super::{link, nl, NicError};

/// `protocol all`: ETH_P_ALL, which the kernel wants in network byte order
/// in the low 16 bits of `tcm_info`.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Removes the ingress qdisc of link `index` (and with it every ingress
/// filter on it). Nothing there: not an error. Returns whether there was one.
pub(crate) async fn clear_ingress_here(
    handle: &Handle,
    netns: &Path,
    device: &str,
    index: u32,
) -> Result<bool, NicError> {
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(0xffff_0000);
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(nl::errno(&e), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(false),
        Err(e) => Err(nl::error(netns, device, "remove its ingress qdisc", e)),
    }
}

/// Redirects everything arriving on `from` out of `to` (one direction).
/// Replaces whatever ingress qdisc `from` had: a stale redirect (to a tap of
/// an earlier attempt) would otherwise drop every frame first.
pub(crate) async fn redirect_here(
    handle: &Handle,
    netns: &Path,
    from: (&str, u32),
    to: (&str, u32),
) -> Result<(), NicError> {
    let (from_name, from_index) = from;
    let (to_name, to_index) = to;
    clear_ingress_here(handle, netns, from_name, from_index).await?;
    handle
        .qdisc()
        .add(from_index as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| nl::error(netns, from_name, "add an ingress qdisc", e))?;
    let filter = handle
        .traffic_filter(from_index as i32)
        .add()
        .ingress()
        .protocol(PROTOCOL_ALL)
        .redirect(to_index)
        .map_err(|e| nl::error(netns, from_name, "build the redirect filter", e))?;
    if let Err(e) = filter.execute().await {
        let err = nl::error(netns, from_name, "add the redirect filter", e);
        // Leave no half-made join: the qdisc is ours (just made).
        let _ = clear_ingress_here(handle, netns, from_name, from_index).await;
        tracing::debug!(to = to_name, "redirect not added: {err}");
        return Err(err);
    }
    Ok(())
}

/// Joins `a` and `b` in the current thread's namespace both ways.
pub(crate) async fn join_both_ways_here(
    handle: &Handle,
    netns: &Path,
    a: &str,
    b: &str,
) -> Result<(), NicError> {
    let a_index = link::info_here(handle, netns, a).await?.index;
    let b_index = link::info_here(handle, netns, b).await?.index;
    redirect_here(handle, netns, (a, a_index), (b, b_index)).await?;
    if let Err(e) = redirect_here(handle, netns, (b, b_index), (a, a_index)).await {
        let _ = clear_ingress_here(handle, netns, a, a_index).await;
        return Err(e);
    }
    Ok(())
}

/// Joins interfaces `a` and `b` of namespace `netns` with mirred redirects
/// in both directions (replacing their ingress qdiscs).
pub fn join_both_ways(netns: &Path, a: &str, b: &str) -> Result<(), NicError> {
    link::validate_ifname("interface", a)?;
    link::validate_ifname("interface", b)?;
    let (a, b) = (a.to_owned(), b.to_owned());
    nl::run_in(netns, move |h, ns| async move {
        join_both_ways_here(&h, &ns, &a, &b).await
    })
}

/// Removes the ingress qdisc (and so the redirect) of `device` in `netns`;
/// returns whether there was one. A backend calls it on `peer` when its
/// launch fails after the join, so a later attempt starts clean.
pub fn clear_ingress(netns: &Path, device: &str) -> Result<bool, NicError> {
    link::validate_ifname("interface", device)?;
    let dev = device.to_owned();
    nl::run_in(netns, move |h, ns| async move {
        let index = link::info_here(&h, &ns, &dev).await?.index;
        clear_ingress_here(&h, &ns, &dev, index).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_all_is_in_network_byte_order() {
        assert_eq!(PROTOCOL_ALL.to_ne_bytes(), [0x00, 0x03]);
    }
}
