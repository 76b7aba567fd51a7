//! The addresses and routes an interface already has: what a caller that
//! configured a namespace itself (containerd's CRI plugin ran CNI in it)
//! leaves for the pod, read back so the guest gets the same.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope};
use rtnetlink::RouteMessageBuilder;

use super::{nl, NicError};

/// At most this many addresses or routes are read from one interface (a
/// namespace is the caller's, but a bound keeps a mistake small).
pub const MAX_ENTRIES: usize = 64;

/// A route through the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `a.b.c.d/len` (`0.0.0.0/0` for the default route).
    pub destination: String,
    pub gateway: Option<String>,
}

/// What an interface is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpConfig {
    /// Global addresses, `addr/len`.
    pub addresses: Vec<String>,
    /// Routes of the main table through it, but the ones its addresses
    /// imply (link scope, no gateway).
    pub routes: Vec<Route>,
}

/// Reads the global addresses and the routes of `device` in `netns`.
pub fn ip_config(netns: &Path, device: &str) -> Result<IpConfig, NicError> {
    let dev = device.to_owned();
    nl::run_in(netns, move |h, ns| async move {
        let link = nl::link_by_name(&h, &ns, &dev).await?;
        let index = link.header.index;
        let mut config = IpConfig::default();
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| nl::error(&ns, &dev, "list addresses", e))?
        {
            if a.header.index != index || a.header.scope != AddressScope::Universe {
                continue;
            }
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                if config.addresses.len() >= MAX_ENTRIES {
                    break;
                }
                config
                    .addresses
                    .push(format!("{ip}/{}", a.header.prefix_len));
            }
        }
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = h.route().get(query).execute();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(|e| nl::error(&ns, &dev, "list routes", e))?
            {
                if r.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut oif = None;
                let mut dst = None;
                let mut gw = None;
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Destination(a) => dst = ip_of(a),
                        RouteAttribute::Gateway(a) => gw = ip_of(a),
                        _ => {}
                    }
                }
                if oif != Some(index) || (gw.is_none() && r.header.scope == RouteScope::Link) {
                    continue;
                }
                let v6 = r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
                if v6 && gw.is_none() {
                    // fe80::/64 and the kernel's other v6 link routes.
                    continue;
                }
                let dst = dst.unwrap_or(if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                if config.routes.len() >= MAX_ENTRIES {
                    break;
                }
                config.routes.push(Route {
                    destination: format!("{dst}/{}", r.header.destination_prefix_length),
                    gateway: gw.map(|g| g.to_string()),
                });
            }
        }
        Ok(config)
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
