//! The pod's network inside the guest (`PodSpec.network`): every field is
//! validated into a [`Plan`] before anything is touched, then `lo` comes up,
//! each NIC (found by its MAC in sysfs) is renamed, gets its MTU and
//! addresses and comes up, and the routes are added. The files every
//! container gets (`/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname`) are in
//! [`files`]. Containers share this network: hyperstart never gives them a
//! network namespace of their own (see `rootfs::new_container_namespaces`).
//!
//! The host is trusted more than a container, but its message is still
//! input: a bad value is an `InvalidRequest` error naming the field, never a
//! panic.

pub mod files;
pub mod netlink;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_protocol::{
    valid_dns_name, valid_hostname, valid_resolver_option, AgentError, AgentErrorKind, NetworkSpec,
};

use crate::log::{debug, log};
use netlink::{Netlink, RouteScope};

type Result<T> = std::result::Result<T, AgentError>;

/// How long a NIC may take to appear (its driver probing) before StartPod
/// fails naming its MAC.
pub const NIC_WAIT: Duration = Duration::from_secs(5);

fn invalid(message: impl Into<String>) -> AgentError {
    AgentError::new(AgentErrorKind::InvalidRequest, message)
}

/// An address with its prefix length (`10.88.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn max_prefix(addr: &IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        // Digits only: `u8::from_str` would take a leading `+`.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        (prefix <= Self::max_prefix(&addr)).then_some(Cidr { addr, prefix })
    }

    /// The address with every bit past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let other = Cidr {
            addr: *ip,
            prefix: self.prefix,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && other.network() == self.network()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: [u8; 6],
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    /// Index into [`Plan::interfaces`].
    pub interface: usize,
}

/// A validated `NetworkSpec`: what [`apply`] configures and [`files`]
/// renders. Text fields are known to be free of whitespace and control
/// characters, so they can be written into the files as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub hostname: String,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    pub hosts: Vec<(IpAddr, Vec<String>)>,
}

impl Plan {
    /// The pod's first address, which its hostname maps to in /etc/hosts.
    pub fn first_address(&self) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .flat_map(|i| i.addresses.iter())
            .map(|c| c.addr)
            .next()
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case); a unicast, non-zero address.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && unicast).then_some(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A Linux interface name: 1..=15 bytes of `[A-Za-z0-9_.-]`, not `.`/`..`
/// (sysfs paths), not `lo`.
pub fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name != "lo"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_count(what: &str, n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(invalid(format!("network: {n} {what}: at most {max}")));
    }
    Ok(())
}

/// Usable as an interface address: not unspecified, loopback or multicast.
fn usable_unicast(ip: &IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast()
}

/// Checks every field of `spec` (with the pod's hostname, which /etc/hosts
/// and /etc/hostname carry; empty leaves both without it).
pub fn validate(spec: &NetworkSpec, hostname: &str) -> Result<Plan> {
    if !hostname.is_empty() && !valid_hostname(hostname) {
        return Err(invalid(format!(
            "invalid hostname {hostname:?}: use at most {} bytes of letters, digits, '-', '_' and '.'",
            NetworkSpec::MAX_HOSTNAME
        )));
    }
    check_count(
        "interfaces",
        spec.interfaces.len(),
        NetworkSpec::MAX_INTERFACES,
    )?;
    check_count("routes", spec.routes.len(), NetworkSpec::MAX_ROUTES)?;
    check_count("hosts entries", spec.hosts.len(), NetworkSpec::MAX_HOSTS)?;
    check_count(
        "nameservers",
        spec.dns.nameservers.len(),
        NetworkSpec::MAX_NAMESERVERS,
    )?;
    check_count(
        "search domains",
        spec.dns.search.len(),
        NetworkSpec::MAX_SEARCH,
    )?;
    check_count(
        "resolver options",
        spec.dns.options.len(),
        NetworkSpec::MAX_OPTIONS,
    )?;

    let mut interfaces: Vec<Interface> = Vec::new();
    for (i, nic) in spec.interfaces.iter().enumerate() {
        let mac = parse_mac(&nic.mac).ok_or_else(|| {
            invalid(format!(
                "network: interface {i}: invalid MAC {:?} (want a unicast aa:bb:cc:dd:ee:ff)",
                nic.mac
            ))
        })?;
        if !valid_interface_name(&nic.name) {
            return Err(invalid(format!(
                "network: interface {i}: invalid name {:?} (1..=15 bytes of letters, digits, '_', '.', '-'; not lo)",
                nic.name
            )));
        }
        if !(68..=65535).contains(&nic.mtu) {
            return Err(invalid(format!(
                "network: interface {}: MTU {} out of 68..=65535",
                nic.name, nic.mtu
            )));
        }
        if interfaces.iter().any(|o| o.mac == mac) {
            return Err(invalid(format!("network: MAC {} given twice", nic.mac)));
        }
        if interfaces.iter().any(|o| o.name == nic.name) {
            return Err(invalid(format!(
                "network: interface name {} given twice",
                nic.name
            )));
        }
        if nic.addresses.len() > NetworkSpec::MAX_ADDRESSES {
            return Err(invalid(format!(
                "network: interface {}: {} addresses: at most {}",
                nic.name,
                nic.addresses.len(),
                NetworkSpec::MAX_ADDRESSES
            )));
        }
        let mut addresses: Vec<Cidr> = Vec::new();
        for a in &nic.addresses {
            let cidr = Cidr::parse(a)
                .filter(|c| usable_unicast(&c.addr))
                .ok_or_else(|| {
                    invalid(format!(
                        "network: interface {}: invalid address {a:?} (want a unicast ADDRESS/PREFIX)",
                        nic.name
                    ))
                })?;
            let taken = interfaces
                .iter()
                .flat_map(|o| o.addresses.iter())
                .chain(addresses.iter())
                .any(|o| o.addr == cidr.addr);
            if taken {
                return Err(invalid(format!(
                    "network: address {} given twice",
                    cidr.addr
                )));
            }
            addresses.push(cidr);
        }
        interfaces.push(Interface {
            mac,
            name: nic.name.clone(),
            mtu: nic.mtu,
            addresses,
        });
    }

    let mut routes = Vec::new();
    for r in &spec.routes {
        let destination = Cidr::parse(&r.destination).ok_or_else(|| {
            invalid(format!(
                "network: route {:?}: invalid destination (want NETWORK/PREFIX, 0.0.0.0/0 for the default route)",
                r.destination
            ))
        })?;
        if destination.network() != destination.addr {
            return Err(invalid(format!(
                "network: route {}: host bits set (the network is {}/{})",
                r.destination,
                destination.network(),
                destination.prefix
            )));
        }
        let gateway = match &r.gateway {
            None => None,
            Some(g) => {
                let ip: IpAddr = g.parse().map_err(|_| {
                    invalid(format!(
                        "network: route {}: invalid gateway {g:?}",
                        r.destination
                    ))
                })?;
                if ip.is_ipv4() != destination.addr.is_ipv4() || !usable_unicast(&ip) {
                    return Err(invalid(format!(
                        "network: route {}: gateway {g} is not a unicast address of the same family",
                        r.destination
                    )));
                }
                Some(ip)
            }
        };
        let interface = interfaces
            .iter()
            .position(|i| i.name == r.interface)
            .ok_or_else(|| {
                invalid(format!(
                    "network: route {}: no interface {:?} in the spec",
                    r.destination, r.interface
                ))
            })?;
        routes.push(Route {
            destination,
            gateway,
            interface,
        });
    }

    let mut nameservers = Vec::new();
    for n in &spec.dns.nameservers {
        let ip: IpAddr = n
            .parse()
            .ok()
            .filter(|ip: &IpAddr| !ip.is_unspecified() && !ip.is_multicast())
            .ok_or_else(|| invalid(format!("network: invalid nameserver {n:?}")))?;
        nameservers.push(ip);
    }
    for s in &spec.dns.search {
        if !valid_dns_name(s, NetworkSpec::MAX_DNS_NAME) {
            return Err(invalid(format!("network: invalid search domain {s:?}")));
        }
    }
    for o in &spec.dns.options {
        if !valid_resolver_option(o) {
            return Err(invalid(format!(
                "network: invalid resolver option {o:?} (like ndots:5 or edns0)"
            )));
        }
    }

    let mut hosts = Vec::new();
    for h in &spec.hosts {
        let ip: IpAddr = h.address.parse().map_err(|_| {
            invalid(format!(
                "network: hosts entry: invalid address {:?}",
                h.address
            ))
        })?;
        if h.names.is_empty() || h.names.len() > NetworkSpec::MAX_HOST_NAMES {
            return Err(invalid(format!(
                "network: hosts entry {}: 1..={} names, not {}",
                h.address,
                NetworkSpec::MAX_HOST_NAMES,
                h.names.len()
            )));
        }
        if let Some(bad) = h
            .names
            .iter()
            .find(|n| !valid_dns_name(n, NetworkSpec::MAX_DNS_NAME))
        {
            return Err(invalid(format!(
                "network: hosts entry {}: invalid name {bad:?}",
                h.address
            )));
        }
        hosts.push((ip, h.names.clone()));
    }

    Ok(Plan {
        hostname: hostname.to_string(),
        interfaces,
        routes,
        nameservers,
        search: spec.dns.search.clone(),
        options: spec.dns.options.clone(),
        hosts,
    })
}

/// The sysfs view of the guest's NICs, so the lookup is testable.
pub struct SysfsNet {
    pub root: PathBuf,
}

impl Default for SysfsNet {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys/class/net"),
        }
    }
}

/// sysfs attributes are tiny; read at most this much of one.
const SYSFS_READ_MAX: u64 = 64;

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(SYSFS_READ_MAX)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim().to_string())
}

impl SysfsNet {
    /// The interface index of the device whose MAC is `mac`.
    pub fn find(&self, mac: &[u8; 6]) -> Option<(String, u32)> {
        std::fs::read_dir(&self.root)
            .ok()?
            .flatten()
            .find_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let dir = self.root.join(&name);
                let found = parse_mac(&read_small(&dir.join("address"))?)?;
                if found != *mac {
                    return None;
                }
                let index = read_small(&dir.join("ifindex"))?.parse().ok()?;
                Some((name, index))
            })
    }

    pub fn index(&self, name: &str) -> Option<u32> {
        read_small(&self.root.join(name).join("ifindex"))?
            .parse()
            .ok()
    }

    /// Waits (bounded) for the NIC with `mac`: its driver may still be
    /// probing when StartPod arrives.
    pub fn wait_for(&self, mac: &[u8; 6], wait: Duration) -> Option<(String, u32)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(found) = self.find(mac) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn failed(message: String) -> AgentError {
    AgentError::new(AgentErrorKind::Failed, message)
}

/// Configures the guest's network per `plan`: `lo` up, every NIC renamed,
/// its MTU and addresses set and brought up, then the routes.
pub fn apply(plan: &Plan, sysfs: &SysfsNet) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| failed(format!("network: netlink socket: {e}")))?;
    let lo = sysfs
        .index("lo")
        .ok_or_else(|| failed("network: the guest has no lo".to_string()))?;
    nl.set_link(lo, None, None, Some(true))
        .map_err(|e| failed(format!("network: bringing lo up: {e}")))?;

    let mut found = Vec::new();
    for nic in &plan.interfaces {
        let (name, index) = sysfs.wait_for(&nic.mac, NIC_WAIT).ok_or_else(|| {
            AgentError::new(
                AgentErrorKind::NotFound,
                format!(
                    "network: no NIC with MAC {} appeared within {}s (is the device attached?)",
                    format_mac(&nic.mac),
                    NIC_WAIT.as_secs()
                ),
            )
        })?;
        debug!("network: {name} (index {index}) is {}", nic.name);
        found.push((name, index));
    }
    // Renames go through a temporary name first so that two NICs can swap
    // names (the kernel refuses a name another device holds). A rename
    // needs the link down.
    for (nic, (current, index)) in plan.interfaces.iter().zip(&found) {
        if *current != nic.name {
            let temp = format!("hyn{index}");
            nl.set_link(*index, None, None, Some(false))
                .and_then(|()| nl.set_link(*index, Some(&temp), None, None))
                .map_err(|e| failed(format!("network: renaming {current}: {e}")))?;
        }
    }
    for (nic, (_, index)) in plan.interfaces.iter().zip(&found) {
        nl.set_link(*index, Some(&nic.name), Some(nic.mtu), None)
            .map_err(|e| {
                failed(format!(
                    "network: naming {} and setting its MTU: {e}",
                    nic.name
                ))
            })?;
        for a in &nic.addresses {
            nl.add_address(*index, a)
                .map_err(|e| failed(format!("network: adding {a} to {}: {e}", nic.name)))?;
        }
        nl.set_link(*index, None, None, Some(true))
            .map_err(|e| failed(format!("network: bringing {} up: {e}", nic.name)))?;
    }
    for r in &plan.routes {
        let nic = &plan.interfaces[r.interface];
        let (_, index) = found[r.interface];
        if let Some(gw) = r.gateway {
            // A gateway outside every subnet of the interface (a /32
            // address, as some CNI plugins hand out) needs a link route to
            // it first, or the kernel calls the gateway unreachable.
            let on_link = nic.addresses.iter().any(|a| a.contains(&gw));
            if !on_link {
                let host = Cidr {
                    addr: gw,
                    prefix: Cidr::max_prefix(&gw),
                };
                nl.add_route(index, &host, None, RouteScope::Link)
                    .map_err(|e| failed(format!("network: route to gateway {gw}: {e}")))?;
            }
        }
        let scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        nl.add_route(index, &r.destination, r.gateway, scope)
            .map_err(|e| failed(format!("network: route {}: {e}", r.destination)))?;
    }
    log!(
        "network: {} interfaces, {} routes configured",
        plan.interfaces.len(),
        plan.routes.len()
    );
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use hyper_protocol::{DnsSpec, HostEntry, InterfaceSpec, RouteSpec};

    use super::*;

    pub(super) fn spec() -> NetworkSpec {
        NetworkSpec {
            interfaces: vec![InterfaceSpec {
                mac: "02:42:0a:58:00:05".into(),
                name: "eth0".into(),
                mtu: 1500,
                addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
            }],
            routes: vec![RouteSpec {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.88.0.1".into()),
                interface: "eth0".into(),
            }],
            dns: DnsSpec {
                nameservers: vec!["10.88.0.1".into(), "2001:4860:4860::8888".into()],
                search: vec!["corp.example".into()],
                options: vec!["ndots:2".into(), "edns0".into()],
            },
            hosts: vec![HostEntry {
                address: "192.168.1.9".into(),
                names: vec!["db".into(), "db.local".into()],
            }],
        }
    }

    #[test]
    fn a_good_spec_becomes_a_plan() {
        let plan = validate(&spec(), "web").unwrap();
        assert_eq!(plan.interfaces[0].mac, [2, 0x42, 10, 0x58, 0, 5]);
        assert_eq!(plan.interfaces[0].addresses[1].to_string(), "fd00::5/64");
        assert_eq!(plan.routes[0].interface, 0);
        assert_eq!(plan.routes[0].destination.prefix, 0);
        assert_eq!(plan.first_address(), Some("10.88.0.5".parse().unwrap()));
        // --network none: no interfaces, still valid.
        let none = NetworkSpec::default();
        assert!(validate(&none, "web").unwrap().interfaces.is_empty());
    }

    /// Every bad field is an InvalidRequest naming what is wrong.
    #[test]
    fn every_bad_field_is_refused_with_its_name() {
        type Edit = fn(&mut NetworkSpec);
        let cases: &[(&str, Edit)] = &[
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "02:42:0a:58:00".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "02:42:0a:58:00:5".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "02-42-0a-58-00-05".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "01:00:5e:00:00:01".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "00:00:00:00:00:00".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "02:42:0a:58:00:05:06".into()
            }),
            ("invalid MAC", |s| {
                s.interfaces[0].mac = "+2:42:0a:58:00:05".into()
            }),
            ("invalid name", |s| s.interfaces[0].name = "".into()),
            ("invalid name", |s| {
                s.interfaces[0].name = "a-very-long-name".into()
            }),
            ("invalid name", |s| s.interfaces[0].name = "eth/0".into()),
            ("invalid name", |s| s.interfaces[0].name = "..".into()),
            ("invalid name", |s| s.interfaces[0].name = "lo".into()),
            ("invalid name", |s| s.interfaces[0].name = "eth 0".into()),
            ("MTU 67", |s| s.interfaces[0].mtu = 67),
            ("MTU 65536", |s| s.interfaces[0].mtu = 65536),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "10.88.0.5".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "10.88.0.5/33".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "10.88.0.5/+8".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "fd00::5/129".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "127.0.0.2/8".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "0.0.0.0/0".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "224.0.0.1/4".into()
            }),
            ("invalid address", |s| {
                s.interfaces[0].addresses[0] = "10.0.0.1/8\n".into()
            }),
            ("given twice", |s| {
                s.interfaces[0].addresses[1] = "10.88.0.5/24".into()
            }),
            ("given twice", |s| {
                let mut again = s.interfaces[0].clone();
                again.name = "eth1".into();
                again.addresses.clear();
                s.interfaces.push(again);
            }),
            ("given twice", |s| {
                let mut again = s.interfaces[0].clone();
                again.mac = "02:00:00:00:00:01".into();
                again.addresses.clear();
                s.interfaces.push(again);
            }),
            ("17 addresses", |s| {
                s.interfaces[0].addresses = (1..=17).map(|i| format!("10.0.0.{i}/24")).collect()
            }),
            ("9 interfaces", |s| {
                s.interfaces = (0..9)
                    .map(|i| InterfaceSpec {
                        mac: format!("02:00:00:00:00:{i:02x}"),
                        name: format!("eth{i}"),
                        mtu: 1500,
                        addresses: vec![],
                    })
                    .collect()
            }),
            ("65 routes", |s| s.routes = vec![s.routes[0].clone(); 65]),
            ("257 hosts", |s| s.hosts = vec![s.hosts[0].clone(); 257]),
            ("invalid destination", |s| {
                s.routes[0].destination = "default".into()
            }),
            ("host bits set", |s| {
                s.routes[0].destination = "10.1.2.3/16".into()
            }),
            ("invalid gateway", |s| {
                s.routes[0].gateway = Some("10.88.0".into())
            }),
            ("same family", |s| {
                s.routes[0].gateway = Some("fd00::1".into())
            }),
            ("same family", |s| {
                s.routes[0].gateway = Some("0.0.0.0".into())
            }),
            ("no interface \"eth9\"", |s| {
                s.routes[0].interface = "eth9".into()
            }),
            ("invalid nameserver", |s| {
                s.dns.nameservers[0] = "dns.google".into()
            }),
            ("invalid nameserver", |s| {
                s.dns.nameservers[0] = "0.0.0.0".into()
            }),
            ("9 nameservers", |s| {
                s.dns.nameservers = vec!["8.8.8.8".into(); 9]
            }),
            ("invalid search domain", |s| s.dns.search[0] = "a b".into()),
            ("invalid search domain", |s| {
                s.dns.search[0] = "x\nnameserver 6.6.6.6".into()
            }),
            ("invalid search domain", |s| {
                s.dns.search[0] = "-bad.example".into()
            }),
            ("invalid search domain", |s| s.dns.search[0] = "a..b".into()),
            ("invalid search domain", |s| {
                s.dns.search[0] = "x".repeat(64)
            }),
            ("invalid resolver option", |s| {
                s.dns.options[0] = "ndots 5".into()
            }),
            ("invalid resolver option", |s| {
                s.dns.options[0] = String::new()
            }),
            ("invalid address", |s| s.hosts[0].address = "db".into()),
            ("invalid name", |s| s.hosts[0].names[0] = "two words".into()),
            ("invalid name", |s| s.hosts[0].names[0] = "#comment".into()),
            ("1..=16 names", |s| s.hosts[0].names.clear()),
            ("1..=16 names", |s| s.hosts[0].names = vec!["n".into(); 17]),
        ];
        for (want, edit) in cases {
            let mut s = spec();
            edit(&mut s);
            let e = validate(&s, "web").expect_err(want);
            assert_eq!(e.kind, AgentErrorKind::InvalidRequest, "{want}");
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
        }
        for bad in ["", "a b", "web\n", "x".repeat(65).as_str(), "web.", "-web"] {
            if bad.is_empty() {
                continue;
            }
            let e = validate(&spec(), bad).unwrap_err();
            assert!(e.message.contains("invalid hostname"), "{}", e.message);
        }
    }

    #[test]
    fn names_and_macs() {
        assert_eq!(
            parse_mac("AA:bb:CC:00:11:22"),
            Some([0xaa, 0xbb, 0xcc, 0, 0x11, 0x22])
        );
        assert_eq!(
            format_mac(&[0xaa, 0xbb, 0xcc, 0, 0x11, 0x22]),
            "aa:bb:cc:00:11:22"
        );
        assert!(valid_interface_name("eth0") && valid_interface_name("net1.100"));
        assert!(valid_interface_name(&"e".repeat(15)) && !valid_interface_name(&"e".repeat(16)));
        assert!(valid_dns_name("host.docker.internal", 253));
        assert!(valid_dns_name("_sip._tcp.example.com.", 253));
        assert!(!valid_dns_name(".", 253) && !valid_dns_name("a.-b", 253));
        assert!(valid_hostname("4f2a0c1d9e7b") && !valid_hostname("a_b c"));
    }

    #[test]
    fn cidrs_know_their_network() {
        let c = Cidr::parse("10.88.3.5/16").unwrap();
        assert_eq!(c.network().to_string(), "10.88.0.0");
        assert!(c.contains(&"10.88.200.1".parse().unwrap()));
        assert!(!c.contains(&"10.89.0.1".parse().unwrap()));
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
        let v6 = Cidr::parse("fd00::5/64").unwrap();
        assert_eq!(v6.network().to_string(), "fd00::");
        assert_eq!(
            Cidr::parse("fd00::5/128").unwrap().network().to_string(),
            "fd00::5"
        );
        assert_eq!(Cidr::parse("10.0.0.1/"), None);
        assert_eq!(Cidr::parse("10.0.0.1/0008"), None);
    }

    #[test]
    fn nics_are_found_by_mac_in_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac, index) in [
            ("lo", "00:00:00:00:00:00", 1),
            ("eth0", "02:42:0A:58:00:05", 2),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
        }
        // A device with garbage in sysfs is skipped, not fatal.
        std::fs::create_dir(dir.path().join("odd")).unwrap();
        std::fs::write(dir.path().join("odd/address"), vec![0xff; 4096]).unwrap();
        let sysfs = SysfsNet {
            root: dir.path().to_path_buf(),
        };
        let mac = parse_mac("02:42:0a:58:00:05").unwrap();
        assert_eq!(sysfs.find(&mac), Some(("eth0".to_string(), 2)));
        assert_eq!(sysfs.index("lo"), Some(1));
        let missing = parse_mac("02:00:00:00:00:99").unwrap();
        assert_eq!(sysfs.wait_for(&missing, Duration::ZERO), None);
    }

    fn sh(netns: &str, cmd: &str) -> String {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread in a new network namespace with `setup` (shell,
    /// run in it) done, and a fake sysfs listing `devices` (name, MAC) with
    /// their real indexes (sysfs shows the namespace of whoever mounted it).
    /// Needs root; without it the caller is told to skip.
    fn in_new_netns(
        setup: &'static str,
        devices: &'static [(&'static str, &'static str)],
        f: fn(&str, &SysfsNet),
    ) -> bool {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("not root: the real-kernel network test is skipped");
            return false;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let netns = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            sh(&netns, setup);
            let dir = tempfile::tempdir().unwrap();
            for (name, mac) in devices {
                let line = sh(&netns, &format!("ip -o link show {name}"));
                let index = line.split(':').next().unwrap().to_string();
                let d = dir.path().join(name);
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("address"), mac).unwrap();
                std::fs::write(d.join("ifindex"), index).unwrap();
            }
            let sysfs = SysfsNet {
                root: dir.path().to_path_buf(),
            };
            f(&netns, &sysfs);
        })
        .join()
        .unwrap();
        true
    }

    /// The encoder against the real kernel, a veth pair standing in for
    /// the VM's NIC.
    #[test]
    fn applies_a_plan_to_a_real_veth() {
        in_new_netns(
            "ip link add v0 address 02:42:0a:58:00:05 type veth peer name v1 && ip link set v1 up",
            &[("lo", "00:00:00:00:00:00"), ("v0", "02:42:0a:58:00:05")],
            |netns, sysfs| {
                let mut s = spec();
                s.interfaces[0].mtu = 1400;
                // A gateway outside the interface's subnets (needs its own
                // link route first).
                s.routes.push(RouteSpec {
                    destination: "192.168.7.0/24".into(),
                    gateway: Some("172.16.0.1".into()),
                    interface: "eth0".into(),
                });
                s.routes.push(RouteSpec {
                    destination: "fd01::/64".into(),
                    gateway: None,
                    interface: "eth0".into(),
                });
                let plan = validate(&s, "web").unwrap();
                apply(&plan, sysfs).unwrap();

                let lo = sh(netns, "ip -o link show lo");
                assert!(lo.contains("UP"), "{lo}");
                let eth0 = sh(netns, "ip -o link show eth0");
                assert!(eth0.contains("mtu 1400") && eth0.contains(",UP"), "{eth0}");
                let addrs = sh(netns, "ip -o addr show dev eth0");
                assert!(addrs.contains("inet 10.88.0.5/16"), "{addrs}");
                assert!(addrs.contains("inet6 fd00::5/64"), "{addrs}");
                let routes = sh(netns, "ip route show; ip -6 route show");
                for want in [
                    "default via 10.88.0.1 dev eth0",
                    "172.16.0.1 dev eth0 scope link",
                    "192.168.7.0/24 via 172.16.0.1 dev eth0",
                    "fd01::/64 dev eth0",
                ] {
                    assert!(routes.contains(want), "{want:?} not in {routes}");
                }
                // Applying again (a host retrying) replaces, not fails.
                apply(&plan, sysfs).unwrap();
                // A kernel refusal comes back with its errno.
                let mut nl = Netlink::open().unwrap();
                let e = nl
                    .add_address(9999, &Cidr::parse("10.9.9.9/24").unwrap())
                    .unwrap_err();
                assert_eq!(e.errno, libc::ENODEV, "{e}");
            },
        );
    }

    /// Two NICs whose names are to be swapped (the kernel refuses a name
    /// another device holds: the renames go through temporary names).
    #[test]
    fn nics_can_swap_names() {
        in_new_netns(
            "ip link add eth0 address 02:00:00:00:00:0a type veth peer name p0 && \
             ip link add eth1 address 02:00:00:00:00:0b type veth peer name p1",
            &[
                ("lo", "00:00:00:00:00:00"),
                ("eth0", "02:00:00:00:00:0a"),
                ("eth1", "02:00:00:00:00:0b"),
            ],
            |netns, sysfs| {
                let nic = |mac: &str, name: &str, addr: &str| InterfaceSpec {
                    mac: mac.into(),
                    name: name.into(),
                    mtu: 1500,
                    addresses: vec![addr.into()],
                };
                let s = NetworkSpec {
                    interfaces: vec![
                        nic("02:00:00:00:00:0a", "eth1", "10.1.0.2/24"),
                        nic("02:00:00:00:00:0b", "eth0", "10.2.0.2/24"),
                    ],
                    ..NetworkSpec::default()
                };
                apply(&validate(&s, "").unwrap(), sysfs).unwrap();
                let eth1 = sh(netns, "ip -o link show eth1; ip -o addr show dev eth1");
                assert!(
                    eth1.contains("02:00:00:00:00:0a") && eth1.contains("10.1.0.2/24"),
                    "{eth1}"
                );
                let eth0 = sh(netns, "ip -o link show eth0; ip -o addr show dev eth0");
                assert!(
                    eth0.contains("02:00:00:00:00:0b") && eth0.contains("10.2.0.2/24"),
                    "{eth0}"
                );
            },
        );
    }
}
