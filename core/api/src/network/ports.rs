//! Published ports: `-p [IP:]HOSTPORT:CTRPORT[/tcp|/udp]`, handed to the
//! CNI `portmap` plugin as the `portMappings` capability.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it is published on; `None`: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    /// Docker's `hyper port` form: `80/tcp -> 127.0.0.1:18080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => "0.0.0.0".into(),
        };
        write!(
            f,
            "{}/{} -> {ip}:{}",
            self.container_port, self.protocol, self.host_port
        )
    }
}

impl PortMapping {
    /// The entry of CNI's `portMappings` capability.
    pub fn to_cni(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.to_string(),
        });
        if let Some(ip) = self.host_ip {
            v["hostIP"] = ip.to_string().into();
        }
        v
    }

    /// Whether `other` would take the same host port (same protocol, and
    /// the same address or either on every address).
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// Fails when a host process already listens on the port: portmap's DNAT
    /// would silently steal its traffic (or lose to it), so the pod is
    /// refused instead, as Docker does.
    pub fn check_free(&self) -> Result<(), String> {
        let ip = self
            .host_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, self.host_port);
        let taken = match self.protocol {
            Protocol::Tcp => TcpListener::bind(addr).err(),
            Protocol::Udp => UdpSocket::bind(addr).err(),
        };
        match taken {
            None => Ok(()),
            Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
                "-p {}: host port {}/{} is already in use on {ip}; pick another host port",
                self.spec(),
                self.host_port,
                self.protocol
            )),
            Some(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(format!(
                "-p {}: {ip} is not an address of this host",
                self.spec()
            )),
            // Anything else (a port below 1024 for a non-root hyperd) is for
            // the plugin to judge.
            Some(_) => Ok(()),
        }
    }

    /// The `-p` text this mapping parses from.
    pub fn spec(&self) -> String {
        let ip = match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:"),
            Some(ip) => format!("{ip}:"),
            None => String::new(),
        };
        format!(
            "{ip}{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl FromStr for PortMapping {
    type Err = String;

    /// `[IP:]HOSTPORT:CTRPORT[/tcp|/udp]`; an IPv6 address in brackets.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: String| {
            format!("-p {text}: {why}; use [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. 127.0.0.1:8080:80")
        };
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(bad(format!("protocol `{other}` is not tcp or udp"))),
            None => (text, Protocol::Tcp),
        };
        let (host_ip, rest) = if let Some(v6) = ports.strip_prefix('[') {
            let (ip, rest) = v6.split_once("]:").ok_or_else(|| {
                bad("an IPv6 address in brackets must be followed by `:HOSTPORT`".into())
            })?;
            let ip = ip
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad(format!("`{ip}` is not an IPv6 address")))?;
            (Some(IpAddr::V6(ip)), rest)
        } else {
            match ports.split(':').collect::<Vec<_>>().as_slice() {
                [_, _] => (None, ports),
                [ip, _, _] => {
                    let parsed = ip
                        .parse::<std::net::Ipv4Addr>()
                        .map_err(|_| bad(format!("`{ip}` is not an IPv4 address")))?;
                    let (_, rest) = ports.split_at(ip.len() + 1);
                    (Some(IpAddr::V4(parsed)), rest)
                }
                [_] => {
                    return Err(bad(
                        "a host port and a container port are both needed".into()
                    ))
                }
                _ => return Err(bad("too many `:`".into())),
            }
        };
        let (host, ctr) = rest
            .split_once(':')
            .ok_or_else(|| bad("a host port and a container port are both needed".into()))?;
        let port = |which: &str, p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(format!(
                    "{which} port `{p}` is not a number from 1 to 65535"
                ))),
                Ok(n) => Ok(n),
            }
        };
        // `0.0.0.0` and `::` mean every address, as no IP does.
        let host_ip = host_ip.filter(|ip| !ip.is_unspecified());
        Ok(Self {
            host_ip,
            host_port: port("host", host)?,
            container_port: port("container", ctr)?,
            protocol,
        })
    }
}

/// Parses every `-p`, refusing two that take the same host port.
pub fn parse_all(specs: &[String]) -> Result<Vec<PortMapping>, String> {
    let mut out: Vec<PortMapping> = Vec::with_capacity(specs.len());
    for s in specs {
        let p: PortMapping = s.parse()?;
        if let Some(prev) = out.iter().find(|q| q.clashes_with(&p)) {
            return Err(format!(
                "-p {s}: host port {}/{} is already published by -p {}",
                p.host_port,
                p.protocol,
                prev.spec()
            ));
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_docker_takes_parse() {
        let p: PortMapping = "127.0.0.1:18080:80".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (18080, 80, Protocol::Tcp)
        );
        let p: PortMapping = "5353:53/udp".parse().unwrap();
        assert_eq!((p.host_ip, p.protocol), (None, Protocol::Udp));
        let p: PortMapping = "[::1]:8080:80/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        let p: PortMapping = "0.0.0.0:80:80".parse().unwrap();
        assert_eq!(p.host_ip, None);
        assert_eq!(
            p.to_cni(),
            serde_json::json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp"})
        );
        let p: PortMapping = "127.0.0.1:1:2/udp".parse().unwrap();
        assert_eq!(p.to_string(), "2/udp -> 127.0.0.1:1");
        assert_eq!(p.spec(), "127.0.0.1:1:2/udp");
    }

    #[test]
    fn malformed_ones_say_what_is_wrong() {
        for (bad, why) in [
            ("80", "both needed"),
            ("80:80/sctp", "sctp"),
            ("x:80", "host port `x`"),
            ("80:0", "container port `0`"),
            ("80:70000", "container port `70000`"),
            ("1.2.3:80:80", "`1.2.3` is not an IPv4"),
            ("a:b:c:d", "too many"),
            ("[::1:80:80", "brackets"),
            ("[zz]:80:80", "`zz` is not an IPv6"),
            ("", "both needed"),
        ] {
            let err = bad.parse::<PortMapping>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("HOSTPORT:CONTAINERPORT"), "{err}");
        }
    }

    #[test]
    fn the_same_host_port_twice_is_refused() {
        let err = parse_all(&["8080:80".into(), "127.0.0.1:8080:81".into()]).unwrap_err();
        assert!(err.contains("already published"), "{err}");
        // Another protocol or another address is another port.
        parse_all(&["8080:80".into(), "8080:80/udp".into()]).unwrap();
        parse_all(&["127.0.0.1:8080:80".into(), "127.0.0.2:8080:80".into()]).unwrap();
    }

    #[test]
    fn a_port_a_host_process_holds_is_taken() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let p: PortMapping = format!("127.0.0.1:{port}:80").parse().unwrap();
        let err = p.check_free().unwrap_err();
        assert!(err.contains("already in use"), "{err}");
        drop(held);
        p.check_free().unwrap();
    }
}
