//! A small rtnetlink client: just the four requests the guest's network
//! needs (set a link's name/MTU/state, add an address, add a route) and the
//! kernel's acknowledgement.
//!
//! Why not `netlink-packet-route` + `netlink-sys`: they build for musl, but
//! they model every rtnetlink message and attribute (hundreds of enum
//! variants with their parsers, plus `netlink-packet-core`, `-utils`,
//! `byteorder`, `anyhow` and `log`) for the three message kinds we send, in
//! an init whose size we keep small. The wire format of those three is
//! fixed kernel ABI (<linux/rtnetlink.h>, <linux/if_addr.h>), a few dozen
//! lines to encode; every encoder below is unit-tested byte by byte, and
//! against the real kernel in a throw-away network namespace when the
//! tests run as root (`net::tests::applies_a_plan_to_a_real_veth`).

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::Cidr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the echoed request is capped to its header
/// (NETLINK_CAP_ACK), and extended-ack attributes follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFF_UP: u32 = 0x1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// No duplicate address detection: CNI's IPAM made the address unique, and
/// DAD would keep an IPv6 address tentative (unusable) for a second or two
/// after the pod's first process starts.
const IFA_F_NODAD: u8 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

const HEADER_LEN: usize = 16;
/// Acks are a few dozen bytes (the request is not echoed, see
/// NETLINK_CAP_ACK); anything longer is cut here.
const RECV_BUF: usize = 8192;
/// Messages that are not our ack, read before giving up.
const MAX_READS: usize = 16;
/// A kernel that never answers must not hang StartPod for ever.
const RECV_TIMEOUT_SECS: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    /// Through a gateway.
    Universe,
    /// Directly on the link.
    Link,
}

impl RouteScope {
    fn value(self) -> u8 {
        match self {
            RouteScope::Universe => 0,
            RouteScope::Link => 253,
        }
    }
}

/// A failed request: the kernel's errno and, when it said one, its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub errno: i32,
    pub message: Option<String>,
}

impl NlError {
    fn io(e: std::io::Error) -> Self {
        Self {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: None,
        }
    }

    fn protocol(message: &str) -> Self {
        Self {
            errno: libc::EPROTO,
            message: Some(message.to_string()),
        }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.errno).desc())?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request being built: the header's length is filled in by
/// [`Message::finish`].
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Self { buf }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        // Attributes are a few bytes (a name, an address): never near u16.
        self.bytes(&(len as u16).to_ne_bytes());
        self.bytes(&kind.to_ne_bytes());
        self.bytes(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// RTM_NEWLINK on an existing link: a new name, MTU, and up/down state,
/// each left alone when `None`. (The kernel renames before it changes the
/// flags, and refuses to rename a link that is up.)
pub fn link_message(
    seq: u32,
    index: u32,
    name: Option<&str>,
    mtu: Option<u32>,
    up: Option<bool>,
) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, 0, seq);
    m.bytes(&[libc::AF_UNSPEC as u8, 0]);
    m.bytes(&0u16.to_ne_bytes());
    m.bytes(&index.to_ne_bytes());
    let (flags, change) = match up {
        Some(true) => (IFF_UP, IFF_UP),
        Some(false) => (0, IFF_UP),
        None => (0, 0),
    };
    m.bytes(&flags.to_ne_bytes());
    m.bytes(&change.to_ne_bytes());
    if let Some(name) = name {
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        m.attr(IFLA_IFNAME, &z);
    }
    if let Some(mtu) = mtu {
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    m.finish()
}

/// RTM_NEWLINK on an existing link: its hardware address (`ip link set
/// dev X address MAC`).
pub fn link_address_message(seq: u32, index: u32, mac: &[u8; 6]) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, 0, seq);
    m.bytes(&[libc::AF_UNSPEC as u8, 0]);
    m.bytes(&0u16.to_ne_bytes());
    m.bytes(&index.to_ne_bytes());
    m.bytes(&0u32.to_ne_bytes());
    m.bytes(&0u32.to_ne_bytes());
    m.attr(IFLA_ADDRESS, mac);
    m.finish()
}

/// RTM_NEWADDR: `cidr` on link `index` (`ip addr replace CIDR dev X`).
pub fn address_message(seq: u32, index: u32, cidr: &Cidr) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    let flags = if cidr.addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    m.bytes(&[family(&cidr.addr), cidr.prefix, flags, 0]);
    m.bytes(&index.to_ne_bytes());
    let ip = ip_bytes(&cidr.addr);
    m.attr(IFA_LOCAL, &ip);
    m.attr(IFA_ADDRESS, &ip);
    m.finish()
}

/// RTM_NEWROUTE in the main table: `destination` through `gateway` or
/// directly on link `index` (`ip route replace DEST [via GW] dev X`).
pub fn route_message(
    seq: u32,
    index: u32,
    destination: &Cidr,
    gateway: Option<IpAddr>,
    scope: RouteScope,
) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    m.bytes(&[
        family(&destination.addr),
        destination.prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope.value(),
        RTN_UNICAST,
    ]);
    m.bytes(&0u32.to_ne_bytes());
    if destination.prefix > 0 {
        m.attr(RTA_DST, &ip_bytes(&destination.addr));
    }
    if let Some(gw) = gateway {
        m.attr(RTA_GATEWAY, &ip_bytes(&gw));
    }
    m.attr(RTA_OIF, &index.to_ne_bytes());
    m.finish()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Looks through what one recv(2) returned for the ack of `seq`: `None` if
/// it is not there, else the request's outcome. Every length is checked
/// against the buffer.
pub fn parse_ack(buf: &[u8], seq: u32) -> Option<Result<(), NlError>> {
    let mut at = 0;
    while buf.len() - at >= HEADER_LEN {
        let msg = &buf[at..];
        let len = u32_at(msg, 0)? as usize;
        if len < HEADER_LEN || len > msg.len() {
            return Some(Err(NlError::protocol("malformed netlink reply")));
        }
        let msg = &msg[..len];
        let kind = u16_at(msg, 4)?;
        let flags = u16_at(msg, 6)?;
        if kind == NLMSG_ERROR && u32_at(msg, 8)? == seq {
            let Some(error) = u32_at(msg, HEADER_LEN).map(|e| e as i32) else {
                return Some(Err(NlError::protocol("short netlink ack")));
            };
            if error == 0 {
                return Some(Ok(()));
            }
            let message = if flags & NLM_F_CAPPED != 0 && flags & NLM_F_ACK_TLVS != 0 {
                ext_ack_message(msg.get(HEADER_LEN + 4 + HEADER_LEN..).unwrap_or(&[]))
            } else {
                None
            };
            return Some(Err(NlError {
                errno: error.checked_neg().unwrap_or(libc::EIO),
                message,
            }));
        }
        at += align4(len).min(buf.len() - at);
    }
    None
}

/// The kernel's text from the extended-ack attributes, bounded and made
/// printable.
fn ext_ack_message(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16_at(tlvs, 0)? as usize;
        let kind = u16_at(tlvs, 2)?;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
            let text: String = String::from_utf8_lossy(&text[..text.len().min(200)])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            return Some(text);
        }
        tlvs = &tlvs[align4(len).min(tlvs.len())..];
    }
    None
}

/// A NETLINK_ROUTE socket that sends one request at a time and waits for
/// its ack.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NlError> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NlError::io(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            // SAFETY: `one` outlives the call and its size is passed; a
            // kernel without the option fails it, which only loses detail.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS.into(),
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NlError::io(std::io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value
        // (port id 0: the kernel picks one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NlError::io(std::io::Error::last_os_error()));
        }
        Ok(Self { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` (built with sequence number `seq`) and waits for its ack.
    fn request(&mut self, seq: u32, msg: &[u8]) -> Result<(), NlError> {
        // SAFETY: `msg` is a valid buffer of the length passed.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(NlError::io(std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; RECV_BUF];
        for _ in 0..MAX_READS {
            // SAFETY: sockaddr_nl is plain data, filled in by recvfrom.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NlError::io(e));
            }
            // Only the kernel (port 0) answers requests.
            if from.nl_pid != 0 {
                continue;
            }
            let n = usize::try_from(n).unwrap_or(0).min(buf.len());
            if let Some(result) = parse_ack(&buf[..n], seq) {
                return result;
            }
        }
        Err(NlError::protocol("no acknowledgement from the kernel"))
    }

    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> Result<(), NlError> {
        let seq = self.next_seq();
        self.request(seq, &link_message(seq, index, name, mtu, up))
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8; 6]) -> Result<(), NlError> {
        let seq = self.next_seq();
        self.request(seq, &link_address_message(seq, index, mac))
    }

    pub fn add_address(&mut self, index: u32, cidr: &Cidr) -> Result<(), NlError> {
        let seq = self.next_seq();
        self.request(seq, &address_message(seq, index, cidr))
    }

    pub fn add_route(
        &mut self,
        index: u32,
        destination: &Cidr,
        gateway: Option<IpAddr>,
        scope: RouteScope,
    ) -> Result<(), NlError> {
        let seq = self.next_seq();
        self.request(seq, &route_message(seq, index, destination, gateway, scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    /// A netlink header as the kernel reads it (native endian).
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(flags.to_ne_bytes());
        v.extend(seq.to_ne_bytes());
        v.extend(0u32.to_ne_bytes());
        v
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn link_address_messages_carry_the_mac_and_change_no_flag() {
        let msg = link_address_message(9, 4, &[2, 0x42, 10, 0x58, 0, 5]);
        let mut want = header(44, 16, 0x5, 9);
        want.extend([0, 0, 0, 0]);
        want.extend(4i32.to_ne_bytes());
        want.extend([0; 8]);
        want.extend(attr(1, &[2, 0x42, 10, 0x58, 0, 5]));
        assert_eq!(msg, want);
    }

    #[test]
    fn link_messages_rename_set_the_mtu_and_flags() {
        let msg = link_message(7, 3, Some("eth0"), Some(1450), None);
        // ifinfomsg: AF_UNSPEC, pad, type 0, index 3, no flag change.
        let mut want = header(52, 16, 0x5, 7);
        want.extend([0, 0, 0, 0]);
        want.extend(3i32.to_ne_bytes());
        want.extend([0; 8]);
        want.extend(attr(3, b"eth0\0")); // 9 bytes, padded to 12
        want.extend(attr(4, &1450u32.to_ne_bytes()));
        assert_eq!(msg, want);

        let up = link_message(8, 1, None, None, Some(true));
        assert_eq!(up.len(), 32);
        assert_eq!(
            &up[24..32],
            [1u32.to_ne_bytes(), 1u32.to_ne_bytes()].concat()
        );
        let down = link_message(9, 1, None, None, Some(false));
        assert_eq!(
            &down[24..32],
            [0u32.to_ne_bytes(), 1u32.to_ne_bytes()].concat()
        );
    }

    #[test]
    fn address_messages_carry_local_and_address() {
        let msg = address_message(1, 2, &cidr("10.88.0.5/16"));
        // NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        let mut want = header(40, 20, 0x505, 1);
        want.extend([2, 16, 0, 0]);
        want.extend(2u32.to_ne_bytes());
        want.extend(attr(2, &[10, 88, 0, 5]));
        want.extend(attr(1, &[10, 88, 0, 5]));
        assert_eq!(msg, want);

        let v6 = address_message(2, 2, &cidr("fd00::5/64"));
        assert_eq!(v6.len(), 16 + 8 + 2 * 20);
        // AF_INET6, /64, IFA_F_NODAD.
        assert_eq!(&v6[16..20], [10, 64, 2, 0]);
        let mut ip = [0u8; 16];
        ip[0] = 0xfd;
        ip[15] = 5;
        assert_eq!(&v6[24..44], attr(2, &ip).as_slice());
    }

    #[test]
    fn route_messages_default_gateway_and_link_routes() {
        let gw = "10.88.0.1".parse().unwrap();
        let msg = route_message(4, 2, &cidr("0.0.0.0/0"), Some(gw), RouteScope::Universe);
        let mut want = header(44, 24, 0x505, 4);
        // family, dst_len, src_len, tos, main table, boot proto, universe, unicast
        want.extend([2, 0, 0, 0, 254, 3, 0, 1]);
        want.extend(0u32.to_ne_bytes());
        // No RTA_DST for the default route.
        want.extend(attr(5, &[10, 88, 0, 1]));
        want.extend(attr(4, &2u32.to_ne_bytes()));
        assert_eq!(msg, want);

        let link = route_message(5, 2, &cidr("10.1.0.0/16"), None, RouteScope::Link);
        let mut want = header(44, 24, 0x505, 5);
        want.extend([2, 16, 0, 0, 254, 3, 253, 1]);
        want.extend(0u32.to_ne_bytes());
        want.extend(attr(1, &[10, 1, 0, 0]));
        want.extend(attr(4, &2u32.to_ne_bytes()));
        assert_eq!(link, want);
    }

    fn error_message(seq: u32, error: i32, flags: u16, tlvs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + 16 + tlvs.len();
        let mut v = header(len as u32, NLMSG_ERROR, flags, seq);
        v.extend(error.to_ne_bytes());
        v.extend(header(32, RTM_NEWROUTE, 0x505, seq));
        v.extend(tlvs);
        v
    }

    #[test]
    fn acks_are_matched_by_sequence_and_errors_carry_the_kernel_text() {
        assert_eq!(parse_ack(&error_message(3, 0, 0x100, &[]), 3), Some(Ok(())));
        assert_eq!(parse_ack(&error_message(3, 0, 0x100, &[]), 4), None);
        // Two messages in one read: only the second is ours.
        let mut two = error_message(2, -libc::EEXIST, 0x100, &[]);
        two.extend(error_message(5, 0, 0x100, &[]));
        assert_eq!(parse_ack(&two, 5), Some(Ok(())));

        let tlv = attr(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0");
        let e = parse_ack(&error_message(6, -libc::ENETUNREACH, 0x300, &tlv), 6)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.errno, libc::ENETUNREACH);
        assert_eq!(e.message.as_deref(), Some("Nexthop has invalid gateway"));
        assert!(e.to_string().contains("Nexthop has invalid gateway"), "{e}");
        // Without the TLV flag the bytes after the header are not read.
        let e = parse_ack(&error_message(6, -libc::ENODEV, 0x100, &tlv), 6)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.message, None);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        // A length past the buffer, a length below the header, a short ack,
        // a TLV running past its message.
        let mut long = error_message(1, 0, 0, &[]);
        long[0..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(matches!(parse_ack(&long, 1), Some(Err(_))));
        let mut tiny = error_message(1, 0, 0, &[]);
        tiny[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse_ack(&tiny, 1), Some(Err(_))));
        let short = header(18, NLMSG_ERROR, 0, 1);
        let mut short = [short, vec![0, 0]].concat();
        short.truncate(18);
        assert!(matches!(parse_ack(&short, 1), Some(Err(_))));
        let mut bad_tlv = attr(NLMSGERR_ATTR_MSG, b"x\0");
        bad_tlv[0..2].copy_from_slice(&200u16.to_ne_bytes());
        let e = parse_ack(&error_message(1, -libc::EINVAL, 0x300, &bad_tlv), 1)
            .unwrap()
            .unwrap_err();
        assert_eq!((e.errno, e.message), (libc::EINVAL, None));
        // Garbage of every short length.
        for n in 0..40 {
            let _ = parse_ack(&vec![0xff; n], 1);
        }
        assert_eq!(parse_ack(&[], 1), None);
    }
}
