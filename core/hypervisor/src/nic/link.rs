//! Reading and setting an interface's basics inside a network namespace.

use std::fmt;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use super::{nl, NicError};

/// What the kit reads about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// The hardware address (`None` for a link without one).
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Has carrier (a tap: some process holds it open).
    pub carrier: bool,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (hex, case-insensitive).
    pub fn parse(text: &str) -> Result<Mac, NicError> {
        let bad = || {
            NicError::invalid(
                "mac",
                text,
                "expected six two-digit hex bytes separated by ':' (aa:bb:cc:dd:ee:ff)",
            )
        };
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }

    /// A unicast address (the group bit is clear): what a NIC may own.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An interface name the kernel accepts (`IFNAMSIZ`: at most 15 bytes; no
/// '/', ':', whitespace; not `.`/`..`).
pub fn validate_ifname(field: &'static str, name: &str) -> Result<(), NicError> {
    let bad = |reason: &str| Err(NicError::invalid(field, name, reason));
    if name.is_empty() || name.len() > 15 {
        return bad("an interface name is 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a valid interface name");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return bad("an interface name has no '/', ':', spaces or non-ASCII bytes");
    }
    Ok(())
}

pub(crate) fn info_of(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: link.header.index,
        mac: None,
        mtu: 0,
        up: link.header.flags.contains(LinkFlags::Up),
        carrier: link.header.flags.contains(LinkFlags::LowerUp),
        rx_packets: 0,
        tx_packets: 0,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Address(addr) => {
                if let Ok(bytes) = <[u8; 6]>::try_from(addr.as_slice()) {
                    info.mac = Some(Mac(bytes));
                }
            }
            LinkAttribute::Stats64(stats) => {
                info.rx_packets = stats.rx_packets;
                info.tx_packets = stats.tx_packets;
            }
            _ => {}
        }
    }
    info
}

/// Reads `device` on the current thread's namespace (`netns` names it in
/// errors).
pub(crate) async fn info_here(
    handle: &Handle,
    netns: &Path,
    device: &str,
) -> Result<LinkInfo, NicError> {
    Ok(info_of(&nl::link_by_name(handle, netns, device).await?))
}

/// Sets the MTU of link `index` and brings it up.
pub(crate) async fn set_mtu_up_here(
    handle: &Handle,
    netns: &Path,
    device: &str,
    index: u32,
    mtu: u32,
) -> Result<(), NicError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| nl::error(netns, device, "set the MTU and bring it up", e))
}

/// Reads interface `device` in the namespace `netns`.
pub fn info(netns: &Path, device: &str) -> Result<LinkInfo, NicError> {
    let dev = device.to_owned();
    nl::run_in(
        netns,
        move |h, ns| async move { info_here(&h, &ns, &dev).await },
    )
}

/// Every interface in the namespace `netns` (to count leftovers).
pub fn list(netns: &Path) -> Result<Vec<LinkInfo>, NicError> {
    nl::run_in(netns, move |h, ns| async move {
        let mut links = h.link().get().execute();
        let mut out = Vec::new();
        loop {
            match links.try_next().await {
                Ok(Some(link)) => out.push(info_of(&link)),
                Ok(None) => return Ok(out),
                Err(e) => return Err(nl::error(&ns, "*", "list interfaces", e)),
            }
        }
    })
}

/// Sets the MTU of `device` in `netns` and brings it up.
pub fn set_mtu_up(netns: &Path, device: &str, mtu: u32) -> Result<(), NicError> {
    validate_mtu(mtu)?;
    let dev = device.to_owned();
    nl::run_in(netns, move |h, ns| async move {
        let link = info_here(&h, &ns, &dev).await?;
        set_mtu_up_here(&h, &ns, &dev, link.index, mtu).await
    })
}

/// Creates a veth pair `a` <-> `b` in `netns` and brings both ends up: a
/// stand-in for what CNI's bridge plugin leaves in a pod's namespace, for
/// tests and benchmarks.
pub fn add_veth(netns: &Path, a: &str, b: &str) -> Result<(), NicError> {
    validate_ifname("interface", a)?;
    validate_ifname("interface", b)?;
    let (a, b) = (a.to_owned(), b.to_owned());
    nl::run_in(netns, move |h, ns| async move {
        h.link()
            .add(LinkVeth::new(&a, &b).build())
            .execute()
            .await
            .map_err(|e| nl::error(&ns, &a, "create a veth pair", e))?;
        for name in [&a, &b] {
            h.link()
                .set(LinkUnspec::new_with_name(name).up().build())
                .execute()
                .await
                .map_err(|e| nl::error(&ns, name, "bring it up", e))?;
        }
        Ok(())
    })
}

/// Deletes interface `device` in `netns` (a veth takes its peer along);
/// returns whether it was there.
pub fn delete(netns: &Path, device: &str) -> Result<bool, NicError> {
    validate_ifname("interface", device)?;
    let dev = device.to_owned();
    nl::run_in(netns, move |h, ns| async move {
        let index = match info_here(&h, &ns, &dev).await {
            Ok(link) => link.index,
            Err(NicError::NoSuchLink { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        h.link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl::error(&ns, &dev, "delete it", e))?;
        Ok(true)
    })
}

/// An Ethernet MTU Linux accepts on a tap or veth (68 ..= 65535).
pub fn validate_mtu(mtu: u32) -> Result<(), NicError> {
    if !(68..=65535).contains(&mtu) {
        return Err(NicError::invalid(
            "mtu",
            mtu.to_string(),
            "must be between 68 and 65535",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = Mac::parse("02:AB:cd:00:11:ff").unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
        assert!(mac.is_unicast());
        assert!(!Mac::parse("ff:ff:ff:ff:ff:ff").unwrap().is_unicast());
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "02:ab:cd:00:11:f",
            "02:ab:cd:00:11:fff",
            "02-ab-cd-00-11-ff",
            "02:ab:cd:00:11:gg",
            "+2:ab:cd:00:11:ff",
        ] {
            let err = Mac::parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid NIC mac"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["eth0", "tap0", "vif1.0", "hyper-tap-0123"] {
            validate_ifname("device", good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef", "é"] {
            assert!(validate_ifname("device", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mtus_out_of_range_are_refused() {
        validate_mtu(1500).unwrap();
        validate_mtu(68).unwrap();
        validate_mtu(65535).unwrap();
        assert!(validate_mtu(67).is_err());
        assert!(validate_mtu(65536).is_err());
    }
}
